"""Turning request items into (modality, raw value) pairs, with client errors as InputError."""

from __future__ import annotations

import base64
import binascii

from polymodal.data.decode import DecodeError, open_image

MAX_ITEM_BYTES = 10 * 1024 * 1024  # an image or a WAV clip, decoded


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


def image_bytes(value: str, param: str) -> bytes:
    """A data URI or bare base64 → image bytes that decode (pixel limit enforced)."""
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if not header.startswith("data:image/") or ";base64" not in header:
            raise InputError("expected a data URI like data:image/png;base64,...", param)
        value = payload
    raw = _b64(value, param)
    try:
        open_image(raw)
    except DecodeError as exc:
        raise InputError(str(exc), param) from exc
    return raw


def audio_bytes(value: str, param: str) -> bytes:
    """A data:audio/wav;base64 URI or bare base64 → WAV bytes that decode (length limit)."""
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if not header.startswith("data:audio/") or ";base64" not in header:
            raise InputError("expected a data URI like data:audio/wav;base64,...", param)
        value = payload
    raw = _b64(value, param)
    from polymodal.data.audio import read_wav

    try:
        read_wav(raw)
    except DecodeError as exc:
        raise InputError(str(exc), param) from exc
    return raw


def parse_item(item, param: str) -> tuple[str, object]:
    """One `input` entry (or a search `query`) → (modality, raw value); param names it."""
    if isinstance(item, str):
        if item.startswith("data:image/"):
            return "image", image_bytes(item, param)
        if item.startswith("data:audio/"):
            return "audio", audio_bytes(item, param)
        return "text", item
    if item.type == "image":
        return "image", image_bytes(item.data, param)
    if item.type == "audio":
        return "audio", audio_bytes(item.data, param)
    return "text", item.data
