"""The vector modality (tabular or precomputed features): decoding a list of floats, and the
standardisation statistics computed once from the train split and kept in the checkpoint."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from polymodal.data.decode import DecodeError


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
    total = squares = None
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
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std[std < 1e-8] = 1.0
    return mean.tolist(), std.tolist()
