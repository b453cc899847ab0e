"""`polymodal data ingest`: read a source, check every row, write the dataset format.

Bad rows are skipped and counted by reason (or, with strict, stop the ingest); either way
nothing is left that looks like a complete dataset unless the ingest finished.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from polymodal.data.decode import DecodeError, open_image
from polymodal.data.format import DatasetWriter, Manifest, split_of
from polymodal.data.sources import RawRow, Source, open_source


class IngestError(ValueError):
    pass


@dataclass
class IngestReport:
    manifest: Manifest
    rows_written: int
    rejected: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # first few rejections, with row numbers
    seconds: float = 0.0


def check_row(row: RawRow, source: Source) -> str | None:
    """Why the row cannot be used, or None if it is fine."""
    if row.error:
        return row.error
    if all(v is None for v in row.values.values()):
        return "no modality present"
    image = row.values.get("image")
    if image is not None:
        try:
            open_image(image)
        except DecodeError as exc:
            return str(exc)
    if row.label is not None and source.label_names and row.label >= len(source.label_names):
        return f"bad label {row.label}: only {len(source.label_names)} classes"
    return None


def _reason_key(reason: str) -> str:
    """Group 'missing file x.png' and 'missing file y.png' under one count."""
    for prefix in ("missing file", "unreadable image", "image too large", "bad label", "bad split"):
        if reason.startswith(prefix):
            return prefix
    return reason.split(":")[0]


def ingest(
    source_spec: str,
    out: str | Path,
    strict: bool = False,
    val_fraction: float = 0.1,
    rows_per_shard: int = 10_000,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> IngestReport:
    start = time.perf_counter()
    source = open_source(source_spec, limit=limit)
    writer = DatasetWriter(
        out,
        source.modalities,
        source.encodings,
        source.label_names,
        source.labelled,
        rows_per_shard=rows_per_shard,
        overwrite=overwrite,
    )
    rejected: Counter = Counter()
    examples: list[str] = []
    written = 0
    try:
        bar = tqdm(
            source.rows,
            total=source.total,
            desc=f"ingest {source.name}",
            unit="row",
            disable=not progress,
            file=sys.stderr,
        )
        for row in bar:
            reason = check_row(row, source)
            if reason is not None:
                where = f"{source.name} row {row.number} (id {row.id}): {reason}"
                if strict:
                    raise IngestError(where)
                rejected[_reason_key(reason)] += 1
                if len(examples) < 10:
                    examples.append(where)
                continue
            split = row.split or split_of(row.id, val_fraction)
            record = {"id": row.id, **row.values}
            if source.labelled:
                record["label"] = row.label
            writer.add(split, record)
            written += 1
        if written == 0:
            raise IngestError(f"{source.name}: no usable rows (rejected: {dict(rejected)})")
        manifest = writer.finish(source.name, source.extra, dict(rejected))
    except BaseException:
        writer.abort()
        raise
    return IngestReport(manifest, written, rejected, examples, time.perf_counter() - start)
