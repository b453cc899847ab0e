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


def chat_items(messages: list) -> tuple[list[str], list[str], list[int]]:
    """vLLM's chat form → (`input` entries, the param naming each, the conversation each
    belongs to). A conversation's texts (every message's, in order) are one text; each image
    and audio part is an entry of its own. Only data URIs: the service fetches no URL."""
    conversations = [messages] if hasattr(messages[0], "role") else messages
    one = conversations is not messages  # a lone conversation is `messages`, not messages[0]
    items: list[str] = []
    params: list[str] = []
    owners: list[int] = []
    for i, conversation in enumerate(conversations):
        where = "messages" if one else f"messages[{i}]"
        texts, start = [], len(items)
        for k, message in enumerate(conversation):
            parts = message.content
            if isinstance(parts, str):
                texts.append(parts)
                continue
            for j, part in enumerate(parts):
                param = f"{where}[{k}].content[{j}]"
                value = getattr(part, part.type)
                if value is None:
                    raise InputError(f"a {part.type} part has no '{part.type}' field", param)
                if part.type == "text":
                    texts.append(value)
                    continue
                if part.type == "input_audio":
                    uri = f"data:audio/{value.format};base64,{value.data}"
                else:
                    uri = value.url
                if not uri.startswith("data:"):
                    raise InputError(f"{part.type}: only data URIs (data:...;base64,...)", param)
                items.append(uri)
                params.append(param)
        if texts:
            items.append(" ".join(texts))
            params.append(where)
        if len(items) == start:
            raise InputError("a conversation with no text, image or audio", where)
        owners += [i] * (len(items) - start)
    return items, params, owners
