"""Turning request items into (modality, raw value) pairs, with client errors as InputError."""

from __future__ import annotations

import base64
import binascii
import math

from polymodal.data.decode import DecodeError, open_image

MAX_ITEM_BYTES = 10 * 1024 * 1024  # an image or a WAV clip, decoded
MAX_VECTOR_DIM = 65_536


class InputError(ValueError):
    """A client mistake: becomes a 4xx with `param` naming the offending field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status


def _b64(data: str, param: str) -> bytes:
    if len(data) > MAX_ITEM_BYTES * 4 // 3 + 4:
        raise InputError(f"item larger than {MAX_ITEM_BYTES} bytes", param, 413)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"invalid base64: {exc}", param) from exc


def _payload(value: str, param: str, kind: str, example: str, check) -> bytes:
    """A data:{kind}/... URI or bare base64 → bytes that `check` accepts (its DecodeError
    becomes the client's 400)."""
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if not header.startswith(f"data:{kind}/") or ";base64" not in header:
            raise InputError(f"expected a data URI like {example}", param)
        value = payload
    raw = _b64(value, param)
    try:
        check(raw)
    except DecodeError as exc:
        raise InputError(str(exc), param) from exc
    return raw


def image_bytes(value: str, param: str) -> bytes:
    """Image bytes that decode (pixel limit enforced)."""
    return _payload(value, param, "image", "data:image/png;base64,...", open_image)


def audio_bytes(value: str, param: str) -> bytes:
    """WAV bytes that decode (length limit enforced)."""
    from polymodal.data.audio import read_wav  # scipy, loaded only for audio

    return _payload(value, param, "audio", "data:audio/wav;base64,...", read_wav)


def vector_values(value, param: str) -> list[float]:
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


def parse_value(modality: str, value, param: str):
    """A value given for a known modality → what the model decodes, or InputError."""
    if modality == "vector":
        return vector_values(value, param)
    if not isinstance(value, str):
        raise InputError(f"{modality} data must be a string", param)
    if modality == "image":
        return image_bytes(value, param)
    if modality == "audio":
        return audio_bytes(value, param)
    return value


def parse_item(item, param: str) -> tuple[str, object]:
    """One `input` entry (or a search `query`) → (modality, raw value); param names it."""
    if isinstance(item, str):
        if item.startswith("data:image/"):
            return "image", image_bytes(item, param)
        if item.startswith("data:audio/"):
            return "audio", audio_bytes(item, param)
        return "text", item
    return item.type, parse_value(item.type, item.data, param)
