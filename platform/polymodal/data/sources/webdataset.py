"""Webdataset tar shards (img2dataset's layout) as an ingest source: one RawRow per sample.

`.cls` holds an integer label; the classes are then named "0".."max".
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from polymodal.data.format import DatasetError
from polymodal.data.sources.base import RawRow, Source
from polymodal.data.tars import iter_samples, sample_row, shard_uris


def shard_rows(uri: str) -> Iterator[RawRow]:
    for number, (key, files) in enumerate(iter_samples(uri), start=1):
        row = sample_row(key, files)
        label, error = None, None
        if row["label"] is not None:
            try:
                label = int(row["label"])
                error = f"bad label {row['label']!r}: negative" if label < 0 else None
            except ValueError:
                error = f"bad label {row['label']!r}: expected an integer"
        values = {"image": row["image"], "text": row["text"]}
        yield RawRow(number, key, values, label, error=error, shard=uri)


def webdataset(pattern: str, limit: int | None = None) -> Source:
    uris = shard_uris(pattern)
    first = next(iter_samples(uris[0]), None)
    if first is None:
        raise DatasetError(f"{uris[0]}: no samples in the tar")
    row = sample_row(*first)
    modalities = [m for m in ("image", "text") if row[m] is not None]
    rows = itertools.chain.from_iterable(shard_rows(u) for u in uris)
    return Source(
        name=f"webdataset:{pattern}",
        modalities=modalities,
        encodings={"image": "jpeg|png|webp", "text": "utf-8"},
        label_names=None,
        labelled=row["label"] is not None,
        rows=itertools.islice(rows, limit) if limit else rows,
        shards=uris,
        shard_rows=shard_rows,
    )
