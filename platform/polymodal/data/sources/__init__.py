"""Ingest sources by name: `builtin:NAME` or a folder path with an index file."""

from __future__ import annotations

from collections.abc import Callable

from polymodal.data.sources.base import RawRow, Source
from polymodal.data.sources.builtin import digits, fashion_mnist
from polymodal.data.sources.folder import folder

BUILTIN_SOURCES: dict[str, Callable[..., Source]] = {
    "builtin:digits": digits,
    "builtin:fashion-mnist": fashion_mnist,
}


def open_source(spec: str, limit: int | None = None) -> Source:
    if spec.startswith("builtin:"):
        if spec not in BUILTIN_SOURCES:
            raise ValueError(f"unknown source '{spec}'; builtin sources: {sorted(BUILTIN_SOURCES)}")
        return BUILTIN_SOURCES[spec](limit=limit)
    return folder(spec, limit=limit)


__all__ = ["BUILTIN_SOURCES", "RawRow", "Source", "open_source"]
