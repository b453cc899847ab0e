"""Turning request items into (modality, raw value) pairs through each modality's own request
parsing and checks (polymodal.modalities); client mistakes are InputError (a 4xx)."""

from __future__ import annotations

from typing import Any

from polymodal.modalities import MODALITIES, Preprocessing
from polymodal.modalities.base import InputError


def modality_of(item: Any) -> str:
    """The modality an `input` entry (or a search `query`) claims, read without decoding it: a
    plain string is text unless it is a data URI of a modality that takes them."""
    if isinstance(item, str):
        for m in MODALITIES.values():
            if m.data_uri and item.startswith(f"data:{m.data_uri}/"):
                return m.name
        return "text"
    return item.type


def require_modality(model: str, prep: Preprocessing, modality: str, param: str) -> None:
    """InputError unless the served model has an encoder for `modality`. Checked before any
    decoding: a WAV sent to an image-text model is refused for what it is, not for how its
    bytes look to a decoder the model never uses."""
    if modality not in prep.modalities:
        raise InputError(
            f"model '{model}' has no {modality} encoder; "
            f"its modalities are {', '.join(prep.modalities)}",
            param,
        )


def parse_value(modality: str, value: Any, param: str) -> Any:
    """A value given for a known modality → what the model decodes, or InputError."""
    return MODALITIES[modality].parse_request(value, param)


def parse_item(item: Any, param: str) -> tuple[str, Any]:
    """One `input` entry (or a search `query`) → (modality, raw value); param names it."""
    modality = modality_of(item)
    return modality, parse_value(modality, item if isinstance(item, str) else item.data, param)


def check_item(model: str, prep: Preprocessing, modality: str, value: Any, param: str) -> int:
    """The checks that need the served model (it has the modality; a vector's length) → the
    item's tokens for usage (UTF-8 bytes of a text), or InputError."""
    require_modality(model, prep, modality, param)
    return MODALITIES[modality].check_request(value, prep, param)
