"""The vector modality (tabular or precomputed features): a list of floats standardised with
statistics computed once from the train split and kept in the checkpoint; an MLP tower; MSE."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from polymodal.modalities.base import DecodeError, InputError, Modality
from polymodal.sections import TowerSettings

MAX_VECTOR_DIM = 65_536  # values per vector in a request


class VectorSettings(TowerSettings):
    """The vector tower: mlp (two layers over the standardised features)."""

    width: int = Field(128, ge=1, description="The MLP's output width.")
    hidden: int = Field(256, ge=1, description="The MLP's hidden width.")


def decode_vector(value, mean: list[float], std: list[float]) -> np.ndarray:
    """A list of floats → float32 [dim], standardised with the train split's mean and std."""
    try:
        x = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise DecodeError("wrong type", f"vector is {type(value).__name__}, not numbers") from None
    if x.ndim != 1 or len(x) != len(mean):
        raise DecodeError("bad vector", f"shape {x.shape}, expected ({len(mean)},)")
    if not np.isfinite(x).all():
        raise DecodeError("bad vector", f"{int((~np.isfinite(x)).sum())} values are NaN or inf")
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def vector_stats(columns: Iterable[pa.ChunkedArray | pa.Array]) -> tuple[list[float], list[float]]:
    """Mean and standard deviation per feature over every finite, full-length row of a
    list<float> column (streamed chunk by chunk); a constant feature gets std 1."""
    total: np.ndarray | None = None
    squares: np.ndarray | None = None
    count, dim = 0, None
    for column in columns:
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        for chunk in chunks:
            rows = chunk.drop_null()
            if not len(rows):
                continue
            lengths = rows.value_lengths().to_numpy(zero_copy_only=False)
            dim = dim if dim is not None else int(lengths[0])
            values = rows.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
            if not (lengths == dim).all():
                raise DecodeError("bad vector", f"lengths {sorted(set(lengths.tolist()))}")
            x = values.reshape(-1, dim)
            x = x[np.isfinite(x).all(axis=1)]
            total = x.sum(0) if total is None else total + x.sum(0)
            squares = (x**2).sum(0) if squares is None else squares + (x**2).sum(0)
            count += len(x)
    if not count:
        raise DecodeError("bad vector", "no finite vector to compute statistics from")
    assert total is not None and squares is not None  # rows were counted: they were summed
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std[std < 1e-8] = 1.0
    return mean.tolist(), std.tolist()


def decode(value: Any, prep, augment=None, rng=None) -> np.ndarray:
    return decode_vector(value, prep.vector_mean, prep.vector_std)


def settings(cfg, manifest, train_column) -> dict[str, Any]:
    """The train split's mean and std per feature: one pass over its vector column."""
    mean, std = vector_stats(train_column("vector"))
    return {"vector_mean": mean, "vector_std": std}


def mlp(cfg, prep):
    from polymodal.towers.vector import MLP

    v = cfg.model.vector
    return MLP(len(prep.vector_mean), v.hidden, v.width, cfg.model.dropout)


def decoder(cfg, prep):
    from polymodal.towers.decoders import VectorDecoder

    return VectorDecoder(cfg.model.embed_dim, len(prep.vector_mean), cfg.model.vector.hidden)


def parse_request(value: Any, param: str) -> list[float]:
    """A JSON array of finite numbers (its length is checked against the model elsewhere)."""
    if not isinstance(value, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise InputError("a vector is a JSON array of numbers", param)
    if len(value) > MAX_VECTOR_DIM:
        raise InputError(f"vector longer than {MAX_VECTOR_DIM} values", param, 413)
    if not all(math.isfinite(v) for v in value):
        raise InputError("vector has NaN or infinite values", param)
    return [float(v) for v in value]


def check_request(value: list[float], prep, param: str) -> int:
    if len(value) != len(prep.vector_mean):
        raise InputError(
            f"vector has {len(value)} values; the model takes {len(prep.vector_mean)}", param
        )
    return 0


VECTOR = Modality(
    name="vector",
    arrow_type=pa.list_(pa.float32()),
    defaults={"vector_mean": [], "vector_std": []},
    settings=settings,
    decode=decode,
    input_shape=lambda prep: ((len(prep.vector_mean),), np.float32),
    encoders={"mlp": mlp},
    model_settings=VectorSettings,
    decoder=decoder,  # MSE per standardised feature
    parse_request=parse_request,
    check_request=check_request,
    bad_row_reasons=("bad vector",),
)
