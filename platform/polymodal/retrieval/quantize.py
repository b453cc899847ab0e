"""Embeddings as int8/uint8 codes (calibrated per dimension) or sign bits (binary/ubinary),
as sentence-transformers defines them: 4x and 32x smaller vectors for cheap search."""

from __future__ import annotations

import numpy as np

from polymodal.retrieval.vectors import truncate

FORMATS = ("int8", "uint8", "binary", "ubinary")


def ranges(vectors: np.ndarray) -> np.ndarray:
    """[2, dim] per-dimension (min, max) of calibration vectors: what int8 codes span."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return np.stack([vectors.min(axis=0), vectors.max(axis=0)])


def calibration(vectors: np.ndarray, sizes: list[int]) -> dict[str, list]:
    """For each size the embeddings may be truncated to: ranges() of the renormalised
    prefixes of `vectors` (a checkpoint's val embeddings), as stored in polymodal.json."""
    return {str(d): ranges(truncate(vectors, d)).tolist() for d in sizes}


def unit_ranges(dim: int) -> np.ndarray:
    """The ranges of an uncalibrated model: a unit vector's numbers lie in [-1, 1]."""
    return np.stack([-np.ones(dim, np.float32), np.ones(dim, np.float32)])


def steps(span: np.ndarray) -> np.ndarray:
    """The width of one int8 step per dimension: 255 steps between a span's min and max."""
    lo, hi = span
    return np.maximum(hi - lo, np.float32(1e-12)) / 255


def quantize(vectors: np.ndarray, precision: str, span: np.ndarray | None = None) -> np.ndarray:
    """[n, dim] floats → int8/uint8 codes [n, dim] (span: ranges(), values outside clipped)
    or packed sign bits [n, ceil(dim / 8)] (binary: as int8 shifted by -128, ubinary: uint8)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if precision in ("binary", "ubinary"):
        bits = np.packbits(vectors > 0, axis=-1)
        return (bits.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else bits
    if precision not in ("int8", "uint8"):
        raise ValueError(f"precision must be one of {FORMATS}, got {precision!r}")
    if span is None:
        raise ValueError(f"{precision} needs calibration ranges")
    codes = np.clip(np.floor((vectors - span[0]) / steps(span)), 0, 255)
    return (codes - 128).astype(np.int8) if precision == "int8" else codes.astype(np.uint8)


def dequantize(codes: np.ndarray, span: np.ndarray) -> np.ndarray:
    """int8 codes → the floats they stand for (the middle of each step)."""
    return span[0] + (codes.astype(np.float32) + 128.5) * steps(span)
