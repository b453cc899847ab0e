"""Decoding raw column values into model inputs: image bytes → float tensors, text → byte ids
(or a pretrained tower's WordPiece ids),
WAV bytes → log-mel spectrograms (data/audio.py), float lists → standardised vectors
(data/vector.py). No Ray: the Ray Data pipeline, evaluation and serving all call these.
"""

from __future__ import annotations

import functools
import io
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

MAX_IMAGE_PIXELS = 40_000_000  # refuse decompression bombs before decoding
TEXT_PAD = 0  # also BERT's [PAD] id, so one padding rule serves every tokenizer
TEXT_VOCAB = 257  # byte value + 1; 0 is padding


class DecodeError(ValueError):
    """A value that cannot become a model input; `reason` is its category (BAD_ROW_REASONS)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# Why a row is dropped at training time, as counted in metrics and `polymodal data validate`.
BAD_ROW_REASONS = (
    "unreadable image",
    "image too large",
    "empty text",
    "wrong type",
    "label out of range",
    "no modality present",
    "unreadable audio",
    "audio too long",
    "bad vector",
)


@dataclass
class Preprocessing:
    """Everything needed to turn raw values into model inputs; stored in every checkpoint."""

    modalities: list[str]
    image_size: int = 28
    image_channels: int = 1
    text_max_len: int = 48
    text_tokenizer: str = "bytes"  # bytes, or the name of a pretrained tower (pretrained.py)
    audio_rate: int = 8000  # Hz every clip is resampled to
    audio_seconds: float = 2.0  # clips are cut or zero-padded to this length
    n_mels: int = 40
    # The vector modality's standardisation, from the train split (its length is the dim).
    vector_mean: list[float] = field(default_factory=list)
    vector_std: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_image(data: bytes) -> Image.Image:
    """Open and fully decode image bytes; raise DecodeError for anything unusable."""
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise DecodeError("image too large", f"{img.width}x{img.height} pixels")
        img.load()
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard, before ours is reached
        raise DecodeError("image too large", str(exc)) from exc
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DecodeError("unreadable image", str(exc)) from exc
    return img


@dataclass
class Augment:
    """Random resized crop (torchvision's sampling) and horizontal flip, for training only."""

    crop_scale: tuple[float, float] = (1.0, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: float = 0.0

    @property
    def active(self) -> bool:
        return self.crop_scale[0] < 1.0 or self.hflip > 0


def random_crop_box(
    width: int, height: int, aug: Augment, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) covering a random share of the area and aspect ratio."""
    area = width * height
    log_ratio = np.log(aug.crop_ratio)
    for _ in range(10):
        target = area * rng.uniform(*aug.crop_scale)
        ratio = np.exp(rng.uniform(*log_ratio))
        w, h = round(np.sqrt(target * ratio)), round(np.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    return 0, 0, width, height  # the whole image, as torchvision falls back to a center crop


def decode_image(
    data: bytes,
    size: int,
    channels: int,
    augment: Augment | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Image bytes → float32 [channels, size, size] in [0, 1], randomly cropped and flipped
    when augment is given."""
    img = open_image(data).convert("L" if channels == 1 else "RGB")
    if augment is not None and augment.active:
        rng = rng or np.random.default_rng()
        if augment.crop_scale[0] < 1.0:
            img = img.crop(random_crop_box(img.width, img.height, augment, rng))
        if rng.random() < augment.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


@functools.lru_cache(maxsize=8)
def _wordpiece(name: str, max_len: int):
    from tokenizers import Tokenizer

    from polymodal.pretrained import pretrained_dir

    tok = Tokenizer.from_file(str(pretrained_dir(name) / "tokenizer.json"))
    tok.enable_truncation(max_len)
    tok.enable_padding(length=max_len, pad_id=TEXT_PAD)
    return tok


def text_vocab_size(tokenizer: str) -> int:
    return TEXT_VOCAB if tokenizer == "bytes" else _wordpiece(tokenizer, 8).get_vocab_size()


def encode_text(text: str, max_len: int, tokenizer: str = "bytes") -> np.ndarray:
    """UTF-8 bytes + 1, padded with 0: any language works without a vocabulary. With a
    pretrained tower's name, that tower's WordPiece ids ([CLS] ... [SEP], padded with 0)."""
    if tokenizer != "bytes":
        return np.asarray(_wordpiece(tokenizer, max_len).encode(text).ids, dtype=np.int64)
    ids = np.zeros(max_len, dtype=np.int64)
    raw = np.frombuffer(text.encode("utf-8")[:max_len], dtype=np.uint8)
    ids[: len(raw)] = raw.astype(np.int64) + 1
    return ids


def decode_text(ids: np.ndarray) -> str:
    raw = bytes(int(i) - 1 for i in ids if i != TEXT_PAD)
    return raw.decode("utf-8", errors="replace")


def content_hash(value: Any) -> int:
    """Stable id of a raw value, so retrieval can count identical content as a hit."""
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:  # a vector: its numbers as float32, however they were stored
        data = np.asarray(value, dtype=np.float32).tobytes()
    return zlib.crc32(data) | (len(data) << 32)


def decode_value(
    modality: str,
    value: Any,
    prep: Preprocessing,
    augment: Augment | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One raw value → the model's input array; DecodeError says why it cannot be used."""
    if modality == "image":
        if not isinstance(value, bytes | bytearray | memoryview):
            raise DecodeError("wrong type", f"image is {type(value).__name__}, expected bytes")
        return decode_image(bytes(value), prep.image_size, prep.image_channels, augment, rng)
    if modality == "text":
        if not isinstance(value, str):
            raise DecodeError("wrong type", f"text is {type(value).__name__}, expected str")
        if not value.strip():
            raise DecodeError("empty text")
        return encode_text(value, prep.text_max_len, prep.text_tokenizer)
    if modality == "audio":
        if not isinstance(value, bytes | bytearray | memoryview):
            raise DecodeError("wrong type", f"audio is {type(value).__name__}, expected bytes")
        from polymodal.data.audio import audio_features  # scipy, loaded only for audio

        return audio_features(bytes(value), prep)
    if modality == "vector":
        from polymodal.data.vector import decode_vector

        return decode_vector(value, prep.vector_mean, prep.vector_std)
    raise DecodeError("wrong type", f"no decoder for modality '{modality}'")


def mel_frames(seconds: float, rate: int, hop: int = 128) -> int:
    """Frames of data/audio.py's log_mel for a clip of `seconds` at `rate`."""
    return 1 + round(seconds * rate) // hop


def input_shapes(prep: Preprocessing) -> dict[str, tuple[tuple[int, ...], type]]:
    """Each modality's model input: (shape of one row, dtype)."""
    return {
        "image": ((prep.image_channels, prep.image_size, prep.image_size), np.float32),
        "text": ((prep.text_max_len,), np.int64),
        "audio": ((1, prep.n_mels, mel_frames(prep.audio_seconds, prep.audio_rate)), np.float32),
        "vector": ((len(prep.vector_mean),), np.float32),
    }


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
    augment: Augment | None = None,
) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
    """Raw columns (lists of values, None for missing) → arrays for the model, and the rows
    that were dropped as (row index, reason).

    Each modality m gives `m` and `m_present` (1.0 where the row has it); `label` is -1 where
    missing. With `with_hashes`, `m_hash` holds content_hash of each raw value (0 if missing).
    A row whose value does not decode, whose label is out of range, or that has none of the
    modalities is dropped rather than failing the batch. `augment` applies to images.
    """
    rng = np.random.default_rng() if augment is not None else None
    n = len(next(iter(columns.values())))
    shapes = input_shapes(prep)
    for m in prep.modalities:
        if m not in shapes:
            raise DecodeError("wrong type", f"no decoder for modality '{m}'")
    values = {m: columns.get(m, [None] * n) for m in prep.modalities}
    labels = columns.get("label") or [None] * n
    arrays = {m: np.zeros((n, *shapes[m][0]), dtype=shapes[m][1]) for m in prep.modalities}
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
                    arrays[m][i] = decode_value(m, v, prep, augment, rng)
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
        out[f"{m}_present"] = present[m][rows]
        if with_hashes:
            out[f"{m}_hash"] = np.array(
                [content_hash(values[m][i]) if values[m][i] is not None else 0 for i in keep],
                dtype=np.int64,
            )
    out["label"] = label_out[rows]
    return out, bad
