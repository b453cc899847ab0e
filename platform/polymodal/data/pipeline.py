"""The Ray Data side: read a split's pieces (Parquet row groups, tars) and decode them in CPU
tasks; for training, a rank's pieces of an epoch in its plan's order (data/order.py)."""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from polymodal import storage
from polymodal.data import tars
from polymodal.data.decode import decode_columns
from polymodal.data.decoded_cache import CachedPiece, DecodedCache, cache_root
from polymodal.data.format import (
    Manifest,
    is_webdataset,
    negatives_sizes,
    open_shard,
    read_columns,
    read_manifest,
    row_groups,
    shard_paths,
)
from polymodal.data.order import pack, piece_rng
from polymodal.modalities import Preprocessing

SAMPLE_IDS = 100  # rejected row ids kept per run, for the run dir's bad_rows.json


class BadRows:
    """Counts what the decoding tasks of a run saw and dropped, by split and reason: one
    actor per run (BadRowsActor)."""

    def __init__(self) -> None:
        self.seen: Counter = Counter()  # split -> rows
        self.bad: dict[str, Counter] = {}  # split -> reason -> rows
        self.samples: list[dict[str, str]] = []
        self.by_source: dict[str, Counter] = {}  # a mixture's source -> "seen" and reasons

    def add(self, split: str, seen: int, bad: list[tuple[str, str]], source: str = "") -> None:
        self.seen[split] += seen
        counts = self.bad.setdefault(split, Counter())
        for row_id, reason in bad:
            counts[reason] += 1
            if len(self.samples) < SAMPLE_IDS:
                sample = {"split": split, "id": row_id, "reason": reason}
                self.samples.append(sample | ({"source": source} if source else {}))
        if source:
            mine = self.by_source.setdefault(source, Counter())
            mine["seen"] += seen
            mine.update(reason for _, reason in bad)

    def totals(self) -> dict[str, Any]:
        out = {
            "seen": dict(self.seen),
            "bad": {s: dict(c) for s, c in self.bad.items()},
            "samples": list(self.samples),
        }
        if self.by_source:
            out["sources"] = {s: dict(c) for s, c in self.by_source.items()}
        return out


# Applied as a call, not as a decorator: mypy would not type a decorated class as an actor.
BadRowsActor = ray.remote(num_cpus=0)(BadRows)


def sample_key(row_id: str) -> int:
    """A row id as a 63-bit integer, so it rides along in tensor batches (`sample`)."""
    return int.from_bytes(hashlib.blake2b(row_id.encode(), digest_size=8).digest(), "big") >> 1


def decode_block(
    table: pa.Table,
    prep: dict[str, Any],
    with_hashes: bool = False,
    num_labels: int | None = None,
    augment: dict[str, Any] | None = None,
    with_samples: bool = False,
    negatives: dict[str, int] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, list[tuple[int, str, str]]]:
    """One block of raw rows → the decoded (and, with augment, randomly changed) arrays of
    the rows that decoded, with `sample` their sample_key if with_samples; which rows those
    are; and the others as (row, id, reason). negatives: the mined directions read, with
    their K (format.negatives_sizes)."""
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    out, dropped = decode_columns(
        columns, Preprocessing(**prep), with_hashes, num_labels, augment, negatives
    )
    ids = columns.get("id") or [str(i) for i in range(table.num_rows)]
    kept = np.ones(table.num_rows, dtype=bool)
    kept[[i for i, _ in dropped]] = False
    if with_samples:  # only for the sample log and frozen features: no hashing otherwise
        out["sample"] = np.array([sample_key(ids[i]) for i in np.flatnonzero(kept)], dtype=np.int64)
    return out, kept, [(i, ids[i], reason) for i, reason in dropped]


def read_shards(uris: list[str], **kwargs) -> ray.data.Dataset:
    """read_parquet over local or s3:// shards, with our S3 settings (endpoint, region)."""
    fs, _ = storage.resolve(uris[0])
    paths = [storage.resolve(u)[1] for u in uris]
    return ray.data.read_parquet(paths, filesystem=fs, **kwargs)


@dataclass
class PieceReader:
    """How a read task turns a piece into blocks: its columns, rows per decoded block, the
    decoding (decode_block's settings); with `ordered`, rows shuffled by the piece's seed and
    tagged with positions; with a BadRows actor, dropped rows counted under split (and a
    mixture's source); with a cache, row groups decoded once per node (data/decoded_cache)."""

    columns: list[str]
    rows: int
    decoding: dict[str, Any]
    ordered: bool = False
    bad_rows: Any = None
    split: str = ""
    source: str = ""
    cache: DecodedCache | None = None

    def count(self, seen: int, bad: list[tuple[int, str, str]]) -> None:
        if self.bad_rows is not None:  # fire and forget: the count must not slow decoding
            dropped = [(row_id, reason) for _, row_id, reason in bad]
            self.bad_rows.add.remote(self.split, seen, dropped, self.source)

    def decode(self, table: pa.Table, positions: np.ndarray | None = None) -> dict:
        """Raw rows → decoded arrays, with `position` the kept rows' stream positions if
        given; undecodable rows dropped and counted."""
        out, kept, bad = decode_block(table, **self.decoding)
        if positions is not None:
            out["position"] = positions[kept]
        self.count(table.num_rows, bad)
        return out

    def tables(self, item: dict[str, Any]) -> Iterator[pa.Table]:
        """The piece's raw rows: a Parquet row group whole (group >= 0) or a webdataset tar
        (group -1) `rows` at a time, each shuffled by the item's seed when ordered."""
        if item["group"] < 0:
            chunks: Iterable[pa.Table] = (
                t.select(self.columns) for t in tars.read_tables([item["uri"]], self.rows)
            )
        else:
            chunks = [open_shard(item["uri"]).read_row_group(item["group"], columns=self.columns)]
        for n, chunk in enumerate(chunks):
            if self.ordered:
                chunk = chunk.take(piece_rng(item["seed"], n).permutation(chunk.num_rows))
            yield chunk

    def cached(self, item: dict[str, Any]) -> bool:
        """Whether this node holds the piece decoded (so a worker can read it itself)."""
        return self.cache is not None and self.cache.has(item)

    def __call__(self, item: dict[str, Any]) -> Iterator[Any]:
        """One read task: the piece decoded `rows` rows at a time into blocks, from row
        item["skip"] on (a resumed rank's first piece)."""
        if self.cache is not None and item["group"] >= 0:
            for out in self.blocks(item):
                yield BlockAccessor.batch_to_block(out)
            return
        start, skip = item.get("lo", 0), item.get("skip", 0)
        base = pack(item.get("ordinal", 0), 0)
        for chunk in self.tables(item):
            if "lo" in item:  # this rank's part of the piece (rows lo..hi after the shuffle)
                chunk = chunk.slice(item["lo"], item["hi"] - item["lo"])
            for lo in range(max(skip - start, 0), chunk.num_rows, self.rows):
                piece = chunk.slice(lo, self.rows)
                positions = None
                if self.ordered:
                    positions = base + start + lo + np.arange(piece.num_rows, dtype=np.int64)
                out = self.decode(piece, positions=positions)
                if "source" in item:  # a mixture's piece: its rows say which source
                    out["source"] = np.full(len(out["label"]), item["source"], dtype=np.int64)
                if len(out["label"]):  # all rows bad: an empty block loses the tensor types
                    yield BlockAccessor.batch_to_block(out)
            start += chunk.num_rows

    def blocks(self, item: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
        """A row group's rows from the node's decoded cache (decoded and stored first if it
        is not there), in the order, positions and blocks that decoding it would give, and
        its dropped rows counted again as decoding would count them."""
        assert self.cache is not None
        piece = self.cache.load(item)
        if piece is None:
            piece = self.decode_piece(item)
            self.cache.store(item, piece)
        rows = np.arange(len(piece.kept))
        if self.ordered:
            rows = piece_rng(item["seed"], 0).permutation(len(rows))
        start, skip = item.get("lo", 0), item.get("skip", 0)
        rows = rows[start : item.get("hi", len(rows))]
        base = pack(item.get("ordinal", 0), 0)
        for lo in range(max(skip - start, 0), len(rows), self.rows):
            block = rows[lo : lo + self.rows]
            kept = piece.kept[block]
            self.count(len(block), [(int(i), *piece.bad[int(i)]) for i in block[~kept]])
            if not kept.any():
                continue
            take = block[kept]
            out = {k: np.ascontiguousarray(v[take]) for k, v in piece.arrays.items()}
            if self.ordered:
                positions = base + start + lo + np.arange(len(block), dtype=np.int64)
                out["position"] = positions[kept]
            if "source" in item:
                out["source"] = np.full(len(take), item["source"], dtype=np.int64)
            yield out

    def decode_piece(self, item: dict[str, Any]) -> CachedPiece:
        """A row group decoded whole, in storage order, `rows` rows at a time (uncounted:
        blocks() counts what each epoch reads)."""
        table = open_shard(item["uri"]).read_row_group(item["group"], columns=self.columns)
        kept = np.zeros(table.num_rows, dtype=bool)
        arrays: dict[str, np.ndarray] = {}
        bad: dict[int, tuple[str, str]] = {}
        for lo in range(0, table.num_rows, self.rows):
            out, ok, dropped = decode_block(table.slice(lo, self.rows), **self.decoding)
            rows = lo + np.flatnonzero(ok)
            kept[rows] = True
            bad |= {lo + i: (row_id, reason) for i, row_id, reason in dropped}
            for k, v in out.items():
                if k not in arrays:
                    arrays[k] = np.zeros((table.num_rows, *v.shape[1:]), dtype=v.dtype)
                arrays[k][rows] = v
        return CachedPiece(arrays, kept, bad)


@dataclass
class SourceReaders:
    """Reads a piece with its source's PieceReader (data/order.py's mixture tags each piece
    with its source's index)."""

    readers: list[PieceReader]

    def __call__(self, item: dict[str, Any]) -> Iterator[Any]:
        return self.readers[item.get("source", 0)](item)


class Pieces(Datasource):
    """One Ray Data task per piece, which reads and decodes it; the pieces in the given order
    (a rank's plan for an epoch, kept in order by the iterating side)."""

    def __init__(self, items: list[dict[str, Any]], reader: PieceReader | SourceReaders):
        self.items, self.reader = items, reader

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: int | None = None,
        data_context: ray.data.DataContext | None = None,
    ) -> list[ReadTask]:
        return [
            ReadTask(
                functools.partial(self.reader, it),
                # rows unknown: decoding drops bad ones
                BlockMetadata(None, None, None, input_files=(it["uri"],)),
            )
            for it in self.items
        ]


def pieces(path: str, manifest: Manifest, split: str) -> list[dict[str, Any]]:
    """The units of parallel reading: each tar, or each Parquet row group (ingest writes
    ROW_GROUP_ROWS rows per group) with its rows, found in the shards' footers as their
    schemas are checked."""
    if is_webdataset(manifest):
        return [{"uri": u, "group": -1, "rows": 1} for u in shard_paths(path, manifest, split)]
    return [
        {"uri": u, "group": g, "rows": n, "version": version}
        for u, groups, version in row_groups(path, manifest, split)
        for g, n in enumerate(groups)
    ]


def configure_ray_data(stall_timeout_s: float, ordered: bool = False) -> None:
    """Ray Data settings for our pipelines, in this process (Train's data actors copy the
    driver's); ordered: in a training worker, whose positions must only grow."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = ordered
    ctx.execution_no_progress_timeout_s = stall_timeout_s
    # One progress bar per dataset pass rather than one per operator: readable in a terminal.
    ctx.enable_operator_progress_bars = False
    # Reserving half the CPUs per operator let only one decoding task run at a time on
    # 2 CPUs (4,500 vs 7,900 rows/s on Fashion-MNIST); our pipeline is a single operator,
    # so the reservation protects nothing.
    ctx.op_resource_reservation_enabled = False


def piece_reader(
    path: str,
    split: str,
    prep: Preprocessing,
    decode_batch_size: int = 1024,
    with_hashes: bool = False,
    bad_rows: Any = None,
    manifest: Manifest | None = None,
    augment: dict[str, Any] | None = None,
    with_samples: bool = False,
    ordered: bool = False,
    source: str = "",
    cache_dir: str | None = None,
) -> PieceReader:
    """The reader of one split's pieces; ordered for training (see PieceReader); source: a
    mixture's source, which its bad rows are counted under too; cache_dir: keep decoded row
    groups there on each node ("" = the temp dir; not with augment). Rows with K mined negatives
    decode into 1 + K inputs each: a block then holds decode_batch_size / (1 + K) rows, so
    that its bytes stay those of a block without (LiT at 224 px and K = 3: 0.6, not 2.4 GB)."""
    manifest = manifest or read_manifest(path)
    # Mined negatives are train rows' (mine writes none for val): val's loss is in-batch.
    negatives = negatives_sizes(manifest, prep.modalities) if split == "train" else {}
    decode_batch_size = max(1, decode_batch_size // (1 + sum(negatives.values())))
    decoding = {
        "prep": prep.to_dict(),
        "with_hashes": with_hashes,
        "num_labels": manifest.num_labels,
        "augment": augment or None,
        "with_samples": with_samples,
        "negatives": negatives or None,
    }
    columns = ["id", *read_columns(path, manifest, prep.modalities, with_negatives=bool(negatives))]
    cache = None
    if cache_dir is not None and not augment:  # a random crop works on the raw picture
        cache = DecodedCache(cache_root(cache_dir, [path, split, decoding]))
    return PieceReader(
        columns, decode_batch_size, decoding, ordered, bad_rows, split, source, cache
    )


def pieces_dataset(
    items: list[dict[str, Any]], reader: PieceReader | SourceReaders
) -> ray.data.Dataset:
    """Lazy Ray Dataset of the decoded pieces `items`. One read task per row group or tar,
    decoding fused into it, so decoding runs in parallel however few the shards:
    read_parquet made one task of Fashion-MNIST's small shards."""
    return ray.data.read_datasource(
        Pieces(items, reader),
        override_num_blocks=len(items),  # one task per piece, its blocks not split further
    )


def split_dataset(
    path: str, split: str, prep: Preprocessing, manifest: Manifest | None = None, **kwargs
) -> ray.data.Dataset:
    """Lazy Ray Dataset of one split's decoded arrays, in storage order (val, evaluation);
    kwargs as piece_reader's."""
    manifest = manifest or read_manifest(path)
    reader = piece_reader(path, split, prep, manifest=manifest, **kwargs)
    return pieces_dataset(pieces(path, manifest, split), reader)
