"""int8/uint8 codes calibrated per dimension and packed sign bits, as sentence-transformers
defines them: round trips within a step, bits in order, sizes 4x and 32x smaller."""

from __future__ import annotations

import numpy as np
import pytest

from polymodal.retrieval.quantize import (
    calibration,
    dequantize,
    quantize,
    ranges,
    unit_ranges,
)
from polymodal.retrieval.vectors import truncate


def test_int8_codes_round_trip_within_one_step_and_clip_outside():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(100, 32)).astype(np.float32)
    span = ranges(vectors)
    codes = quantize(vectors, "int8", span)
    assert codes.dtype == np.int8 and codes.shape == vectors.shape
    assert codes.min() == -128 and codes.max() == 127  # the calibration set spans all 256
    step = (span[1] - span[0]) / 255
    assert (np.abs(dequantize(codes, span) - vectors) <= step / 2 + 1e-6).all()
    u = quantize(vectors, "uint8", span)
    assert u.dtype == np.uint8 and (u.astype(np.int16) - 128 == codes).all()
    outside = quantize(span[1:] + 10, "int8", span)
    assert (outside == 127).all()
    assert quantize(vectors, "int8", span).nbytes * 4 == vectors.nbytes


def test_sign_bits_packed_in_order():
    v = np.array([[0.5, -1, 2, 0, -0.1, 3, 1, -2, 7]], dtype=np.float32)  # 9 numbers: 2 bytes
    bits = quantize(v, "ubinary")
    assert bits.tolist() == [[0b10100110, 0b10000000]]
    assert quantize(v, "binary").tolist() == [[0b10100110 - 128, 0b10000000 - 128]]
    with pytest.raises(ValueError, match="precision"):
        quantize(v, "int4")


def test_calibration_per_size_covers_renormalised_prefixes():
    rng = np.random.default_rng(1)
    vectors = truncate(rng.normal(size=(40, 16)), 16)
    cal = calibration(vectors, [4, 16])
    assert set(cal) == {"4", "16"} and np.asarray(cal["4"]).shape == (2, 4)
    np.testing.assert_allclose(cal["4"], ranges(truncate(vectors, 4)), rtol=1e-6)
    assert unit_ranges(3).tolist() == [[-1, -1, -1], [1, 1, 1]]
