"""The Ray Data side: read a split's Parquet shards and decode them in CPU tasks.

Train workers then take `get_dataset_shard(...).iter_torch_batches(drop_last=True)`, which
with Train's equal streaming split gives every rank the same number of batches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data
from ray.data import FileShuffleConfig

from polymodal import storage
from polymodal.data import webdataset
from polymodal.data.decode import Augment, Preprocessing, decode_columns
from polymodal.data.format import (
    Manifest,
    is_webdataset,
    read_columns,
    read_manifest,
    shard_paths,
)

SAMPLE_IDS = 100  # rejected row ids kept per run, for the run dir's bad_rows.json


@ray.remote(num_cpus=0)
class BadRows:
    """Counts what the decoding tasks of a run saw and dropped, by split and reason."""

    def __init__(self):
        self.seen: Counter = Counter()  # split -> rows
        self.bad: dict[str, Counter] = {}  # split -> reason -> rows
        self.samples: list[dict[str, str]] = []

    def add(self, split: str, seen: int, bad: list[tuple[str, str]]) -> None:
        self.seen[split] += seen
        counts = self.bad.setdefault(split, Counter())
        for row_id, reason in bad:
            counts[reason] += 1
            if len(self.samples) < SAMPLE_IDS:
                self.samples.append({"split": split, "id": row_id, "reason": reason})

    def totals(self) -> dict[str, Any]:
        return {
            "seen": dict(self.seen),
            "bad": {s: dict(c) for s, c in self.bad.items()},
            "samples": list(self.samples),
        }


def decode_table(
    table: pa.Table,
    prep: dict[str, Any],
    with_hashes: bool = False,
    shuffle: bool = False,
    num_labels: int | None = None,
    bad_rows: Any = None,
    split: str = "",
    augment: dict[str, Any] | None = None,
) -> dict:
    """One block of raw rows → decoded (and, with augment, randomly changed) arrays;
    undecodable rows are dropped and, with a BadRows actor, counted."""
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    aug = Augment(**augment) if augment else None
    out, bad = decode_columns(columns, Preprocessing(**prep), with_hashes, num_labels, aug)
    if bad_rows is not None:  # fire and forget: the count must not slow decoding down
        ids = columns.get("id") or [str(i) for i in range(table.num_rows)]
        bad_rows.add.remote(split, table.num_rows, [(ids[i], reason) for i, reason in bad])
    if shuffle:  # a fresh permutation every time the block is decoded, i.e. every epoch
        order = np.random.default_rng().permutation(len(out["label"]))
        out = {k: v[order] for k, v in out.items()}
    return out


def read_shards(uris: list[str], **kwargs) -> ray.data.Dataset:
    """read_parquet over local or s3:// shards, with our S3 settings (endpoint, region)."""
    fs, _ = storage.resolve(uris[0])
    paths = [storage.resolve(u)[1] for u in uris]
    return ray.data.read_parquet(paths, filesystem=fs, **kwargs)


def read_webdataset_shards(batch: pa.Table) -> Iterator[pa.Table]:
    yield from webdataset.read_tables(batch.column("uri").to_pylist())


def split_dataset(
    path: str,
    split: str,
    prep: Preprocessing,
    decode_batch_size: int = 1024,
    with_hashes: bool = False,
    shuffle: bool = False,
    bad_rows: Any = None,
    manifest: Manifest | None = None,
    augment: Augment | None = None,
) -> ray.data.Dataset:
    """Lazy Ray Dataset of decoded arrays for one split (nothing is read until iterated)."""
    manifest = manifest or read_manifest(path)
    columns = ["id", *read_columns(path, manifest, prep.modalities)]
    uris = shard_paths(path, manifest, split)
    # shuffle: shards in a new order every epoch (rows are permuted within decoded blocks).
    # Not randomize_block_order: it waits for every block of the read, i.e. the whole split.
    if is_webdataset(manifest):  # one read task per tar, streamed into blocks of samples
        ds = ray.data.from_items([{"uri": u} for u in uris], override_num_blocks=len(uris))
        if shuffle:
            ds = ds.randomize_block_order()  # of the list of tars: tiny
        ds = ds.map_batches(read_webdataset_shards, batch_size=1, batch_format="pyarrow")
    else:
        ds = read_shards(uris, shuffle=FileShuffleConfig() if shuffle else None)
    ds = ds.select_columns(columns)
    return ds.map_batches(
        decode_table,
        batch_format="pyarrow",
        batch_size=decode_batch_size,
        fn_kwargs={
            "prep": prep.to_dict(),
            "with_hashes": with_hashes,
            "shuffle": shuffle,
            "num_labels": len(manifest.label_names) if manifest.label_names else None,
            "bad_rows": bad_rows,
            "split": split,
            "augment": asdict(augment) if augment is not None and augment.active else None,
        },
    )
