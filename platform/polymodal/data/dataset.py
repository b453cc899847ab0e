"""Opening the dataset a config names: its manifest (ingested, or made up for webdataset tars),
its absolute path, and the preprocessing that turns its values into model inputs."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from polymodal.config import Config
from polymodal.config.schema import SourceConfig
from polymodal.data.format import (
    DatasetError,
    Manifest,
    is_webdataset,
    open_shard,
    read_manifest,
    shard_paths,
)
from polymodal.data.tars import is_webdataset_path, read_tables, webdataset_manifest
from polymodal.modalities import MODALITIES, Preprocessing


@dataclass(frozen=True)
class DataSource:
    """One dataset of a run: data.path, or one of data.sources."""

    name: str
    path: str  # absolute, for a local one
    weight: float
    manifest: Manifest


def open_dataset(cfg: Config, source: SourceConfig) -> Manifest:
    """The manifest of a dataset: written by ingest, or made up for webdataset tars (whose
    val tars and label names a source may give, else data.val_path and data.label_names)."""
    if is_webdataset_path(source.path):
        val = source.val_path or cfg.data.val_path
        labels = source.label_names or cfg.data.label_names
        return webdataset_manifest(absolute(source.path), val, tuple(labels))
    return read_manifest(source.path)


def absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def data_sources(cfg: Config) -> list[DataSource]:
    """cfg's datasets, each with its manifest: data.sources, or data.path alone (weight 1)."""
    given = cfg.data.sources or [SourceConfig(path=cfg.data.path)]
    return [DataSource(s.named(), absolute(s.path), s.weight, open_dataset(cfg, s)) for s in given]


def dataset_manifest(cfg: Config) -> Manifest:
    """The manifest of cfg's (first) dataset."""
    return data_sources(cfg)[0].manifest


def dataset_path(cfg: Config) -> str:
    """cfg's (first) dataset, as checkpoints record it."""
    return absolute(cfg.data.sources[0].path if cfg.data.sources else cfg.data.path)


def mixed_manifest(sources: list[DataSource]) -> Manifest:
    """What the sources hold together, as preprocessing reads it: every modality, the label
    names (the same in every labelled source), the widest images (a grey image decodes to
    three equal channels)."""
    labelled = [s for s in sources if s.manifest.label_names is not None]
    for s in labelled[1:]:
        if s.manifest.label_names != labelled[0].manifest.label_names:
            raise DatasetError(
                f"source '{s.name}' ({s.path}): its labels {s.manifest.label_names} differ from "
                f"source '{labelled[0].name}''s {labelled[0].manifest.label_names}; labels must "
                "mean the same in every source (or be absent)"
            )
    first = sources[0].manifest
    if len(sources) == 1:
        return first
    modalities = {m: e for s in sources for m, e in s.manifest.modalities.items()}
    channels = max(s.manifest.extra.get("image_channels", 1) for s in sources)
    return dataclasses.replace(
        first,
        modalities=modalities,
        label_names=labelled[0].manifest.label_names if labelled else None,
        extra={**first.extra, "image_channels": channels},
    )


def preprocessing_for(cfg: Config, manifest: Manifest) -> Preprocessing:
    """What turns the dataset's values into model inputs (see sources_preprocessing)."""
    source = DataSource("", dataset_path(cfg), 1.0, manifest)
    return sources_preprocessing(cfg, [source])


def sources_preprocessing(cfg: Config, sources: list[DataSource]) -> Preprocessing:
    """What turns the sources' values into model inputs: each modality's settings from the
    config, and statistics of the train split where a modality keeps some (vectors: mean and
    std per feature, one pass over the column of every source that has it); kept in every
    checkpoint."""

    def train_column(name: str) -> Iterator[pa.ChunkedArray]:
        for s in sources:
            if name in s.manifest.modalities:
                for path in shard_paths(s.path, s.manifest, "train"):
                    yield open_shard(path).read(columns=[name]).column(0)

    manifest = mixed_manifest(sources)
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
