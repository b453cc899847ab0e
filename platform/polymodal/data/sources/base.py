"""What every ingest source yields: a description of the dataset and raw rows.

Sources only read; checking images and writing shards is the ingest's job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RawRow:
    number: int  # 1-based position in the source, used in error messages
    id: str
    values: dict[str, Any]  # modality -> raw value (image bytes, text str); None when missing
    label: int | None = None
    split: str | None = None  # the source's own split ("train"/"val"); None: split by id
    # Rows of one group land in the same split (hashed instead of the id): near-duplicates
    # (an emoji's skin tones) cannot leak from train into val.
    group: str | None = None
    error: str | None = None  # set when the source already knows the row is bad
    shard: str | None = None  # the file it came from, when the source has several


@dataclass
class Source:
    name: str
    modalities: list[str]
    encodings: dict[str, str]
    label_names: list[str] | None  # None with labelled: integer labels, named "0".."max"
    labelled: bool
    rows: Iterator[RawRow]
    total: int | None = None  # for progress bars
    extra: dict[str, Any] = field(default_factory=dict)
    # Sharded sources (tars, Parquet files) are ingested in parallel, one Ray task per shard:
    # shard_rows(uri) yields that shard's rows and must be picklable (a module-level function
    # or a functools.partial of one).
    shards: list[str] = field(default_factory=list)
    shard_rows: Callable[[str], Iterator[RawRow]] | None = None
