"""The Ray Data side: read a split's Parquet shards and decode them in CPU tasks.

Train workers then take `get_dataset_shard(...).iter_torch_batches(drop_last=True)`, which
with Train's equal streaming split gives every rank the same number of batches.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from polymodal import storage
from polymodal.data import tars
from polymodal.data.decode import decode_columns
from polymodal.data.format import (
    Manifest,
    is_webdataset,
    open_shard,
    read_columns,
    read_manifest,
    row_groups,
    shard_paths,
)
from polymodal.modalities import Preprocessing
from polymodal.modalities.image import Augment

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


def sample_key(row_id: str) -> int:
    """A row id as a 63-bit integer, so it rides along in tensor batches (`sample`)."""
    return int.from_bytes(hashlib.blake2b(row_id.encode(), digest_size=8).digest()) >> 1


def decode_table(
    table: pa.Table,
    prep: dict[str, Any],
    with_hashes: bool = False,
    shuffle: bool = False,
    num_labels: int | None = None,
    bad_rows: Any = None,
    split: str = "",
    augment: Augment | None = None,
    with_samples: bool = False,
) -> dict:
    """One block of raw rows → decoded (and, with augment, randomly changed) arrays, with
    `sample` the rows' sample_key if with_samples; undecodable rows are dropped and, with a
    BadRows actor, counted."""
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    out, bad = decode_columns(columns, Preprocessing(**prep), with_hashes, num_labels, augment)
    ids = columns.get("id") or [str(i) for i in range(table.num_rows)]
    if with_samples:  # only for train.sample_log_dir: no hashing, no extra tensor otherwise
        dropped = {i for i, _ in bad}
        out["sample"] = np.array(
            [sample_key(ids[i]) for i in range(table.num_rows) if i not in dropped],
            dtype=np.int64,
        )
    if bad_rows is not None:  # fire and forget: the count must not slow decoding down
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


def read_piece(
    uri: str, group: int, columns: list[str], rows: int, decode: Callable[[pa.Table], dict]
) -> Iterator[Any]:
    """One read task: a Parquet row group (group >= 0) or a whole webdataset tar (group -1),
    decoded `rows` rows at a time into blocks."""
    if group < 0:
        pieces = (t.select(columns) for t in tars.read_tables([uri], rows))
    else:
        whole = open_shard(uri).read_row_group(group, columns=columns)
        pieces = (whole.slice(start, rows) for start in range(0, whole.num_rows, rows))
    for piece in pieces:
        out = decode(piece)
        if len(out["label"]):  # every row bad: an empty block would not keep the tensor types
            yield BlockAccessor.batch_to_block(out)


class Pieces(Datasource):
    """One Ray Data task per piece that reads and decodes it, in a new random order every time
    the dataset is executed (every epoch) when shuffle is set: planning asks afresh."""

    def __init__(self, items, columns: list[str], rows: int, shuffle: bool, decode: Callable):
        self.items, self.columns, self.rows, self.shuffle = items, columns, rows, shuffle
        self.decode = decode

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, **kwargs) -> list[ReadTask]:
        order = np.random.default_rng().permutation(len(self.items)) if self.shuffle else None
        items = [self.items[i] for i in order] if order is not None else self.items
        return [
            ReadTask(
                functools.partial(
                    read_piece, it["uri"], it["group"], self.columns, self.rows, self.decode
                ),
                # rows unknown: decoding drops bad ones
                BlockMetadata(None, None, None, input_files=(it["uri"],)),
            )
            for it in items
        ]


def pieces(path: str, manifest: Manifest, split: str) -> list[dict[str, Any]]:
    """The units of parallel reading: each tar, or each Parquet row group (ingest writes
    ROW_GROUP_ROWS rows per group), found in the shards' footers as their schemas are
    checked."""
    if is_webdataset(manifest):
        return [{"uri": u, "group": -1} for u in shard_paths(path, manifest, split)]
    return [{"uri": u, "group": g} for u, n in row_groups(path, manifest, split) for g in range(n)]


def configure_ray_data(stall_timeout_s: float) -> None:
    """Ray Data settings for our pipelines, in this driver (Train's data actors copy them)."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_no_progress_timeout_s = stall_timeout_s
    # One progress bar per dataset pass rather than one per operator: readable in a terminal.
    ctx.enable_operator_progress_bars = False
    # Reserving half the CPUs per operator let only one decoding task run at a time on
    # 2 CPUs (4,500 vs 7,900 rows/s on Fashion-MNIST); our pipeline is a single operator,
    # so the reservation protects nothing.
    ctx.op_resource_reservation_enabled = False


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
    with_samples: bool = False,
) -> ray.data.Dataset:
    """Lazy Ray Dataset of decoded arrays for one split (nothing is read until iterated);
    with_samples adds each row's sample_key as `sample`."""
    manifest = manifest or read_manifest(path)
    columns = ["id", *read_columns(path, manifest, prep.modalities)]
    # One read task per row group or tar, decoding fused into it, so decoding runs in
    # parallel however few the shards: read_parquet made one task of Fashion-MNIST's small
    # shards, and randomize_block_order hands all blocks to one task (and waits for the
    # whole split). With shuffle, pieces come in a new order every epoch and rows are
    # permuted within each decoded block.
    items = pieces(path, manifest, split)
    decode = functools.partial(
        decode_table,
        prep=prep.to_dict(),
        with_hashes=with_hashes,
        shuffle=shuffle,
        num_labels=manifest.num_labels,
        bad_rows=bad_rows,
        split=split,
        augment=augment if augment is not None and augment.active else None,
        with_samples=with_samples,
    )
    return ray.data.read_datasource(
        Pieces(items, columns, decode_batch_size, shuffle, decode),
        override_num_blocks=len(items),  # one task per piece, its blocks not split further
    )
