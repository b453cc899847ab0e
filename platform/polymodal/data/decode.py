"""Decoding a block of raw columns into model inputs, one registered modality at a time
(polymodal.modalities), dropping the rows that cannot be used. No Ray: the Ray Data pipeline,
evaluation and `data validate` all call this.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from polymodal.modalities import MODALITIES, Preprocessing
from polymodal.modalities.base import DecodeError, hash_key, present_key


def content_hash(value: Any) -> int:
    """Stable id of a raw value, so retrieval can count identical content as a hit."""
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:  # a vector: its numbers as float32, however they were stored
        data = np.asarray(value, dtype=np.float32).tobytes()
    return zlib.crc32(data) | (len(data) << 32)


def input_shapes(prep: Preprocessing) -> dict[str, tuple[tuple[int, ...], type]]:
    """Each of prep's modalities' model input: (shape of one row, dtype)."""
    return {m: MODALITIES[m].input_shape(prep) for m in prep.modalities}


def decoded_row_bytes(prep: Preprocessing, negatives: dict[str, int] | None = None) -> int:
    """A decoded row's bytes: its inputs, mined negatives, flags, hashes and label."""
    shapes = input_shapes(prep)
    size = {m: int(np.prod(s)) * np.dtype(t).itemsize for m, (s, t) in shapes.items()}
    out = sum(size.values()) + 12 * len(size) + 16
    for key, k in (negatives or {}).items():
        out += k * (size[key.partition("->")[2]] + 12)
    return out


def check_label(value: Any, num_labels: int | None) -> int:
    if value is None:
        return -1
    if isinstance(value, str):  # webdataset's .cls text
        try:
            value = int(value)
        except ValueError:
            raise DecodeError("wrong type", f"label {value!r} is not an integer") from None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise DecodeError("wrong type", f"label is {type(value).__name__}, expected int")
    if value < 0 or (num_labels is not None and value >= num_labels):
        raise DecodeError("label out of range", f"{value} (classes: {num_labels})")
    return int(value)


def decode_columns(
    columns: dict[str, list[Any]],
    prep: Preprocessing,
    with_hashes: bool = False,
    num_labels: int | None = None,
    augment: dict[str, Any] | None = None,
    negatives: dict[str, int] | None = None,
) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
    """Raw columns (lists of values, None for missing) → arrays for the model, and the rows
    that were dropped as (row index, reason).

    Each modality m gives `m` and `m_present` (1.0 where the row has it); `label` is -1 where
    missing. With `with_hashes`, `m_hash` holds content_hash of each raw value (0 if missing).
    A row whose value does not decode, whose label is out of range, or that has none of the
    modalities is dropped rather than failing the batch. `augment`: per modality, what its
    decode takes to change values randomly (Modality.augmentation), for training.
    `negatives`: mined directions ("text->image") -> K, read from their columns
    (format.negatives_column) into `negatives/<key>` [n, K, ...] and `negatives_present/<key>`
    [n, K] (decode_negatives), with `negatives_hash/<key>` [n, K] when with_hashes.
    """
    augment = augment or {}
    rng = np.random.default_rng() if augment else None
    n = len(next(iter(columns.values())))
    shapes = input_shapes(prep)
    decoders = {m: MODALITIES[m].decode for m in prep.modalities}
    values = {m: columns.get(m, [None] * n) for m in prep.modalities}
    labels = columns.get("label") or [None] * n
    arrays: dict[str, np.ndarray] = {
        m: np.zeros((n, *shapes[m][0]), dtype=shapes[m][1]) for m in prep.modalities
    }
    present = {m: np.zeros(n, dtype=np.float32) for m in prep.modalities}
    label_out = np.full(n, -1, dtype=np.int64)
    keep, bad = [], []
    for i in range(n):
        try:
            if all(values[m][i] is None for m in prep.modalities):
                raise DecodeError("no modality present")
            for m in prep.modalities:
                v = values[m][i]
                if v is not None:
                    arrays[m][i] = decoders[m](v, prep, augment.get(m), rng)
                    present[m][i] = 1.0
            label_out[i] = check_label(labels[i], num_labels)
        except DecodeError as exc:
            bad.append((i, exc.reason))
            continue
        keep.append(i)
    rows = np.asarray(keep, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for m in prep.modalities:
        out[m] = arrays[m][rows]
        out[present_key(m)] = present[m][rows]
        if with_hashes:
            out[hash_key(m)] = np.array(
                [content_hash(values[m][i]) if values[m][i] is not None else 0 for i in keep],
                dtype=np.int64,
            )
    out["label"] = label_out[rows]
    for key, k in (negatives or {}).items():
        column = columns.get(NEGATIVES_PREFIX + key) or [None] * n
        lists = [column[i] for i in keep]
        # batch.negatives_key's and negatives_present_key's names (batch.py imports torch)
        out[f"negatives/{key}"], out[f"negatives_present/{key}"] = decode_negatives(
            lists, key.partition("->")[2], k, prep, augment, rng
        )
        if with_hashes:  # batch.negatives_hash_key's name
            out[f"negatives_hash/{key}"] = negatives_hashes(lists, k)
    return out, bad


def negatives_hashes(lists: list[list[Any] | None], k: int) -> np.ndarray:
    """[n, K] content_hash of each row's first K negatives (0 where none)."""
    out = np.zeros((len(lists), k), dtype=np.int64)
    for i, values in enumerate(lists):
        for j, value in enumerate((values or [])[:k]):
            if value is not None:
                out[i, j] = content_hash(value)
    return out


# + a direction "text->image": format.negatives_column, the Parquet column of its negatives
NEGATIVES_PREFIX = "negatives."


def decode_negatives(
    lists: list[list[Any] | None],
    modality: str,
    k: int,
    prep: Preprocessing,
    augment: dict[str, Any] | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's mined negatives (raw values of `modality`, None for none) → [n, K, ...]
    inputs decoded as that modality's rows are, and [n, K] flags: 1.0 where a negative is.
    Past K, or missing, or undecodable: absent (zeros), never a bad row, since the row itself
    is sound and the loss masks absent negatives."""
    shape, dtype = MODALITIES[modality].input_shape(prep)
    decode = MODALITIES[modality].decode
    inputs = np.zeros((len(lists), k, *shape), dtype=dtype)
    present = np.zeros((len(lists), k), dtype=np.float32)
    for i, values in enumerate(lists):
        for j, value in enumerate((values or [])[:k]):
            if value is None:
                continue
            try:
                inputs[i, j] = decode(value, prep, (augment or {}).get(modality), rng)
            except DecodeError:
                continue
            present[i, j] = 1.0
    return inputs, present
