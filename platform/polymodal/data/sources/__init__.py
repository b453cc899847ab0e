"""Ingest sources by name: `builtin:NAME`, webdataset tars (`shards/{000..009}.tar`), a Parquet
or CSV table with a column mapping, or a folder path with an index file."""

from __future__ import annotations

from collections.abc import Callable

from polymodal import storage
from polymodal.data.clip_benchmark import is_layout
from polymodal.data.sources.base import RawRow, Source
from polymodal.data.sources.builtin import (
    asterisk,
    digits,
    digits_spoken,
    digits_trimodal,
    emoji_images,
    fashion_mnist,
)
from polymodal.data.sources.clip_benchmark import clip_benchmark
from polymodal.data.sources.fashion_records import fashion_records
from polymodal.data.sources.folder import folder
from polymodal.data.sources.shapes_vqa import shapes_vqa
from polymodal.data.sources.speech import emoji_bind_image, emoji_bind_speech, emoji_spoken
from polymodal.data.sources.table import parse_mapping, table
from polymodal.data.sources.webdataset import webdataset
from polymodal.data.tars import is_webdataset_path

BUILTIN_SOURCES: dict[str, Callable[..., Source]] = {
    "builtin:digits": digits,
    "builtin:fashion-mnist": fashion_mnist,
    "builtin:asterisk": asterisk,
    "builtin:digits-trimodal": digits_trimodal,
    "builtin:digits-spoken": digits_spoken,
    "builtin:emoji": emoji_images,
    "builtin:emoji-spoken": emoji_spoken,
    "builtin:emoji-bind-image": emoji_bind_image,
    "builtin:emoji-bind-speech": emoji_bind_speech,
    "builtin:shapes-vqa": shapes_vqa,
    "builtin:fashion-records": fashion_records,
}


def open_source(spec: str, limit: int | None = None, mapping: list[str] | None = None) -> Source:
    """mapping (`--map image=col ...`) makes spec a Parquet or CSV table."""
    if spec.startswith("builtin:"):
        if spec not in BUILTIN_SOURCES:
            raise ValueError(f"unknown source '{spec}'; builtin sources: {sorted(BUILTIN_SOURCES)}")
        return BUILTIN_SOURCES[spec](limit=limit)
    if is_webdataset_path(spec) and not mapping:
        return webdataset(spec, limit=limit)
    if not storage.exists(spec):  # said so, rather than searched for an index or a table
        raise FileNotFoundError(f"SOURCE {spec}: no such file or directory")
    if mapping:
        return table(spec, parse_mapping(mapping), limit=limit)
    if is_layout(spec):
        return clip_benchmark(spec, limit=limit)
    if spec.endswith((".parquet", ".csv")):
        raise ValueError(f"{spec}: a table source needs --map, e.g. --map image=jpg text=txt")
    return folder(spec, limit=limit)


__all__ = ["BUILTIN_SOURCES", "RawRow", "Source", "open_source"]
