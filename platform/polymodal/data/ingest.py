"""`polymodal data ingest`: read a source, check every row, write the dataset format.

Bad rows are skipped and counted by reason (or, with strict, stop the ingest); either way
nothing is left that looks like a complete dataset unless the ingest finished.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from PIL import Image
from tqdm import tqdm

from polymodal import storage
from polymodal.data.format import MANIFEST, DatasetWriter, Manifest, ShardWriter, split_of
from polymodal.data.sources import RawRow, Source, open_source
from polymodal.data.tars import is_webdataset_path
from polymodal.modalities import MODALITIES
from polymodal.modalities.base import DecodeError

EXAMPLES = 10
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


class IngestError(ValueError):
    pass


@dataclass
class IngestReport:
    manifest: Manifest
    rows_written: int
    rejected: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # first few rejections, with row numbers
    seconds: float = 0.0
    bytes_written: int = 0
    parallel_tasks: int = 0  # Ray tasks that read the source's shards; 0: read in this process


def check_row(row: RawRow, label_names: list[str] | None) -> str | None:
    """Why the row cannot be used, or None if it is fine."""
    if row.error:
        return row.error
    if all(v is None for v in row.values.values()):
        return "no modality present"
    try:  # values that can never decode (a corrupt image, a WAV without samples)
        for m, value in row.values.items():
            check = MODALITIES[m].check_raw
            if value is not None and check is not None:
                check(value)
    except DecodeError as exc:
        return str(exc)
    if row.label is not None and label_names and row.label >= len(label_names):
        return f"bad label {row.label}: only {len(label_names)} classes"
    return None


def is_color(image: bytes) -> bool:
    """From the header alone (no decoding): anything but grey levels counts as colour."""
    return Image.open(io.BytesIO(image)).mode not in GRAY_MODES


def _reason_key(reason: str) -> str:
    """Group 'missing file x.png' and 'missing file y.png' under one count."""
    prefixes = ("missing file", "unreadable image", "image too large", "unreadable audio")
    for prefix in (*prefixes, "audio too long", "bad label", "bad split"):
        if reason.startswith(prefix):
            return prefix
    return reason.split(":")[0]


@dataclass
class Tally:
    """What one reader (this process, or a Ray task over one shard) saw."""

    written: int = 0
    max_label: int = -1
    rejected: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    error: str | None = None  # strict: the first bad row
    color: bool = False  # some image is in colour: the manifest says image_channels 3


class RowSettings(TypedDict):
    """write_rows' settings, the same for every reader of one ingest."""

    labelled: bool
    label_names: list[str] | None
    val_fraction: float
    strict: bool


def write_rows(
    rows: Iterable[RawRow],
    where: str,
    writer: ShardWriter,
    labelled: bool,
    label_names: list[str] | None,
    val_fraction: float,
    strict: bool,
) -> Tally:
    tally = Tally()
    for row in rows:
        for m, value in row.values.items():  # a blank value (text "  ") is a missing one
            blank = MODALITIES[m].blank
            if value is not None and blank is not None and blank(value):
                row.values[m] = None
        reason = check_row(row, label_names)
        if reason is not None:
            message = f"{row.shard or where} row {row.number} (id {row.id}): {reason}"
            if strict:
                tally.error = message
                return tally
            tally.rejected[_reason_key(reason)] += 1
            if len(tally.examples) < EXAMPLES:
                tally.examples.append(message)
            continue
        if not tally.color and row.values.get("image") is not None:
            tally.color = is_color(row.values["image"])
        split = row.split or split_of(row.group or row.id, val_fraction)
        record = {"id": row.id, **row.values}
        if labelled:
            record["label"] = row.label
            tally.max_label = max(tally.max_label, row.label if row.label is not None else -1)
        writer.add(split, record)
        tally.written += 1
    return tally


def _ingest_shard(item: dict, shard_rows, writer: ShardWriter, **kwargs) -> dict:
    """A Ray Data task: one source shard → Parquet shards in the staging area; the tally and
    the shards written come back as JSON."""
    writer.tag = f"{item['index']:05d}-"
    tally = write_rows(shard_rows(item["uri"]), item["uri"], writer, **kwargs)
    shards = writer.close()
    # not asdict(): it rebuilds a Counter from (key, value) pairs, counting the pairs
    summary = {**vars(tally), "rejected": dict(tally.rejected), "shards": shards}
    summary["bytes"] = writer.bytes
    return {"summary": json.dumps(summary)}


def _ingest_parallel(source: Source, writer: DatasetWriter, progress: bool, **kwargs):
    import ray.data

    from polymodal.cluster import ensure_ray

    ensure_ray()
    items = [{"uri": u, "index": i} for i, u in enumerate(source.shards)]
    # Each task writes into the staging area itself: on S3 that is shared by every node.
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map(
        # Ray types fn as taking the row alone, though fn_kwargs (documented) gives the rest.
        _ingest_shard,  # type: ignore[arg-type]
        fn_kwargs={"shard_rows": source.shard_rows, "writer": writer.shard_writer(), **kwargs},
    )
    total, bytes_written = Tally(), 0
    bar = tqdm(
        total=len(items),
        desc=f"ingest {source.name}",
        unit="shard",
        file=sys.stderr,
        disable=not progress,
    )
    for out in ds.iter_rows():
        part = json.loads(out["summary"])
        writer.add_shards(part["shards"])
        bytes_written += part["bytes"]
        total.written += part["written"]
        total.max_label = max(total.max_label, part["max_label"])
        total.rejected.update(part["rejected"])
        total.examples += part["examples"][: EXAMPLES - len(total.examples)]
        total.error = total.error or part["error"]
        total.color = total.color or part["color"]
        bar.update(1)
        bar.set_postfix(rows=total.written)
    bar.close()
    return total, bytes_written


def ingest(
    source_spec: str,
    out: str | Path,
    strict: bool = False,
    val_fraction: float = 0.1,
    rows_per_shard: int = 10_000,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    mapping: list[str] | None = None,
) -> IngestReport:
    """Sharded sources (several tars or Parquet files) are read by Ray Data tasks in parallel,
    one per shard, each writing its own output shards; the rest in this process."""
    start = time.perf_counter()
    # Before the source is read: OUT is no file and apart from SOURCE; --overwrite replaces
    # a dataset only (DatasetWriter refuses an existing OUT without it).
    named = source_spec.startswith("builtin:") or is_webdataset_path(source_spec)
    reusable = (lambda names: MANIFEST in names) if overwrite else (lambda names: True)
    storage.check_output_dir(out, "OUT", {"SOURCE": None if named else source_spec}, reusable)
    source = open_source(source_spec, limit=limit, mapping=mapping)
    writer = DatasetWriter(
        out,
        source.modalities,
        source.encodings,
        source.label_names,
        source.labelled,
        rows_per_shard=rows_per_shard,
        overwrite=overwrite,
    )
    kwargs: RowSettings = {
        "labelled": source.labelled,
        "label_names": source.label_names,
        "val_fraction": val_fraction,
        "strict": strict,
    }
    parallel = len(source.shards) > 1 and limit is None
    try:
        if parallel:
            tally, bytes_written = _ingest_parallel(source, writer, progress, **kwargs)
        else:
            rows = tqdm(
                source.rows,
                total=source.total,
                desc=f"ingest {source.name}",
                unit="row",
                disable=not progress,
                file=sys.stderr,
            )
            tally = write_rows(rows, source.name, writer.rows, **kwargs)
            bytes_written = 0
        if tally.error:
            raise IngestError(tally.error)
        if tally.written == 0:
            raise IngestError(f"{source.name}: no usable rows (rejected: {dict(tally.rejected)})")
        if source.labelled and source.label_names is None:  # integer labels: "0".."max"
            writer.label_names = [str(i) for i in range(tally.max_label + 1)]
        extra = dict(source.extra)
        if "image" in source.modalities:
            extra.setdefault("image_channels", 3 if tally.color else 1)
        manifest = writer.finish(source.name, extra, dict(tally.rejected))
    except BaseException:
        writer.abort()
        raise
    return IngestReport(
        manifest,
        tally.written,
        tally.rejected,
        tally.examples,
        time.perf_counter() - start,
        bytes_written + writer.rows.bytes,
        len(source.shards) if parallel else 0,
    )
