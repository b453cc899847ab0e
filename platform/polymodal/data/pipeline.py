"""The Ray Data side: read a split's Parquet shards and decode them in CPU tasks.

Train workers then take `get_dataset_shard(...).iter_torch_batches(drop_last=True)`, which
with Train's equal streaming split gives every rank the same number of batches.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data

from polymodal import storage
from polymodal.data.decode import Preprocessing, decode_columns
from polymodal.data.format import read_columns, read_manifest, shard_paths

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
) -> dict:
    """One block of raw rows → decoded arrays; undecodable rows are dropped and, with a
    BadRows actor, counted."""
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    out, bad = decode_columns(columns, Preprocessing(**prep), with_hashes, num_labels)
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


def split_dataset(
    path: str,
    split: str,
    prep: Preprocessing,
    decode_batch_size: int = 1024,
    with_hashes: bool = False,
    shuffle: bool = False,
    bad_rows: Any = None,
) -> ray.data.Dataset:
    """Lazy Ray Dataset of decoded arrays for one split (nothing is read until iterated)."""
    manifest = read_manifest(path)
    columns = ["id", *read_columns(path, manifest, prep.modalities)]
    ds = read_shards(shard_paths(path, manifest, split)).select_columns(columns)
    if shuffle:  # a new block order every epoch, without moving rows between blocks
        ds = ds.randomize_block_order()
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
        },
    )
