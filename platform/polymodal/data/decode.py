"""Decoding raw column values into model inputs: image bytes → float tensors, text → byte ids.

Plain numpy/PIL, no Ray: the Ray Data pipeline, evaluation and serving all call these.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

MAX_IMAGE_PIXELS = 40_000_000  # refuse decompression bombs before decoding
TEXT_PAD = 0
TEXT_VOCAB = 257  # byte value + 1; 0 is padding


class DecodeError(ValueError):
    pass


@dataclass
class Preprocessing:
    """Everything needed to turn raw values into model inputs; stored in every checkpoint."""

    modalities: list[str]
    image_size: int = 28
    image_channels: int = 1
    text_max_len: int = 48

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_image(data: bytes) -> Image.Image:
    """Open and fully decode image bytes; raise DecodeError for anything unusable."""
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise DecodeError(f"image too large: {img.width}x{img.height} pixels")
        img.load()
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard, before ours is reached
        raise DecodeError(f"image too large: {exc}") from exc
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DecodeError(f"unreadable image: {exc}") from exc
    return img


def decode_image(data: bytes, size: int, channels: int) -> np.ndarray:
    """Image bytes → float32 [channels, size, size] in [0, 1]."""
    img = open_image(data).convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def encode_text(text: str, max_len: int) -> np.ndarray:
    """UTF-8 bytes + 1, padded with 0: any language works without a vocabulary."""
    ids = np.zeros(max_len, dtype=np.int64)
    raw = np.frombuffer(text.encode("utf-8")[:max_len], dtype=np.uint8)
    ids[: len(raw)] = raw.astype(np.int64) + 1
    return ids


def decode_text(ids: np.ndarray) -> str:
    raw = bytes(int(i) - 1 for i in ids if i != TEXT_PAD)
    return raw.decode("utf-8", errors="replace")


def content_hash(value: Any) -> int:
    """Stable id of a raw value, so retrieval can count identical content as a hit."""
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return zlib.crc32(data) | (len(data) << 32)


def decode_columns(
    columns: dict[str, list[Any]], prep: Preprocessing, with_hashes: bool = False
) -> dict[str, np.ndarray]:
    """Raw columns (lists of values, None for missing) → arrays for the model.

    Each modality m gives `m` and `m_present` (1.0 where the row has it); `label` is -1 where
    missing. With `with_hashes`, `m_hash` holds content_hash of each raw value (0 if missing).
    """
    n = len(next(iter(columns.values())))
    out: dict[str, np.ndarray] = {}
    for m in prep.modalities:
        values = columns.get(m, [None] * n)
        present = np.array([v is not None for v in values], dtype=np.float32)
        if m == "image":
            shape = (prep.image_channels, prep.image_size, prep.image_size)
            arr = np.zeros((n, *shape), dtype=np.float32)
            for i, v in enumerate(values):
                if v is not None:
                    arr[i] = decode_image(v, prep.image_size, prep.image_channels)
        elif m == "text":
            arr = np.zeros((n, prep.text_max_len), dtype=np.int64)
            for i, v in enumerate(values):
                if v is not None:
                    arr[i] = encode_text(v, prep.text_max_len)
        else:
            raise DecodeError(f"no decoder for modality '{m}'")
        out[m] = arr
        out[f"{m}_present"] = present
        if with_hashes:
            out[f"{m}_hash"] = np.array(
                [content_hash(v) if v is not None else 0 for v in values], dtype=np.int64
            )
    labels = columns.get("label")
    out["label"] = np.array(
        [-1 if v is None else v for v in (labels if labels is not None else [None] * n)],
        dtype=np.int64,
    )
    return out
