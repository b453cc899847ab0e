"""Opening the dataset a config names: its manifest (ingested, or made up for webdataset tars),
its absolute path, and the preprocessing that turns its values into model inputs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from polymodal.config import Config
from polymodal.data.format import (
    Manifest,
    is_webdataset,
    open_shard,
    read_manifest,
    shard_paths,
)
from polymodal.data.tars import is_webdataset_path, read_tables, webdataset_manifest
from polymodal.modalities import MODALITIES, Preprocessing


def dataset_manifest(cfg: Config) -> Manifest:
    """The manifest of cfg's dataset: written by ingest, or made up for webdataset tars."""
    if is_webdataset_path(cfg.data.path):
        return webdataset_manifest(
            dataset_path(cfg), cfg.data.val_path, tuple(cfg.data.label_names)
        )
    return read_manifest(cfg.data.path)


def dataset_path(cfg: Config) -> str:
    return cfg.data.path if "://" in cfg.data.path else os.path.abspath(cfg.data.path)


def preprocessing_for(cfg: Config, manifest: Manifest) -> Preprocessing:
    """What turns the dataset's values into model inputs: each modality's settings from the
    config, and statistics of the train split where a modality keeps some (vectors: mean and
    std per feature, one pass over the column); kept in every checkpoint."""

    def train_column(name: str) -> Iterator[pa.ChunkedArray]:
        for path in shard_paths(dataset_path(cfg), manifest, "train"):
            yield open_shard(path).read(columns=[name]).column(0)

    settings: dict[str, Any] = {}
    for m in cfg.model.modalities:
        settings.update(MODALITIES[m].settings(cfg, manifest, train_column))
    return Preprocessing(list(cfg.model.modalities), **settings)


def iter_tables(
    path: str | Path,
    split: str,
    columns: list[str],
    batch_size: int,
    manifest: Manifest | None = None,
):
    """Record batches of one split, read shard by shard (memory bounded by batch_size)."""
    manifest = manifest or read_manifest(path)
    if is_webdataset(manifest):
        for table in read_tables(shard_paths(path, manifest, split), batch_size):
            yield table.select(columns)
        return
    for file in shard_paths(path, manifest, split):
        for batch in open_shard(file).iter_batches(batch_size=batch_size, columns=columns):
            yield pa.Table.from_batches([batch])
