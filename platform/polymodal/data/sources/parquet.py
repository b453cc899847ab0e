"""An existing Parquet table (a file or a directory of files, local or s3://) as an ingest
source, its columns mapped onto ours: `--map image=jpg_bytes text=caption label=cls id=key`
(and `vector=features` for a list<float> column).

String labels are class names (sorted); integer labels are named "0".."max".
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from polymodal import storage
from polymodal.data.format import DatasetError, open_shard
from polymodal.data.sources.base import RawRow, Source

FIELDS = ("image", "text", "vector", "label", "id")
MODALITIES = ("image", "text", "vector")


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    """["image=jpg", "text=caption"] → {"image": "jpg", "text": "caption"}."""
    mapping = {}
    for pair in pairs:
        ours, _, theirs = pair.partition("=")
        if ours not in FIELDS or not theirs:
            raise ValueError(f"--map {pair!r}: expected FIELD=COLUMN with FIELD one of {FIELDS}")
        mapping[ours] = theirs
    if not set(MODALITIES) & set(mapping):
        raise ValueError("--map must name an image, text or vector column, e.g. --map image=jpg")
    return mapping


def shard_rows(
    uri: str, mapping: dict[str, str], label_names: list[str] | None
) -> Iterator[RawRow]:
    columns = list(dict.fromkeys(mapping.values()))
    number = 0
    for batch in open_shard(uri).iter_batches(batch_size=1024, columns=columns):
        for rec in batch.to_pylist():
            number += 1
            values = {m: rec[mapping[m]] for m in MODALITIES if m in mapping}
            error = None
            if values.get("image") is not None and not isinstance(values["image"], bytes):
                error = f"wrong type: column {mapping['image']!r} is not bytes"
            label = rec.get(mapping["label"]) if "label" in mapping else None
            if isinstance(label, str) and label_names:
                label = label_names.index(label)
            elif label is not None and label < 0:
                error = error or f"bad label {label!r}: negative"
            rid = str(rec[mapping["id"]]) if "id" in mapping else f"{uri}#{number}"
            yield RawRow(number, rid, values, label, error=error, shard=uri)


def parquet(path: str, mapping: dict[str, str], limit: int | None = None) -> Source:
    files = [path] if str(path).endswith(".parquet") else storage.list_files(path, ".parquet")
    if not files:
        raise DatasetError(f"{path}: no .parquet files")
    schema = open_shard(files[0]).schema_arrow
    for ours, theirs in mapping.items():
        if theirs not in schema.names:
            raise DatasetError(f"{files[0]}: no column {theirs!r} for {ours} (has {schema.names})")
    if "vector" in mapping:
        kind = schema.field(mapping["vector"]).type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
            raise DatasetError(
                f"{files[0]}: column {mapping['vector']!r} is {kind}, not a list of floats"
            )
    label_names = None
    if "label" in mapping and pa.types.is_string(schema.field(mapping["label"]).type):
        names: set[str] = set()
        for f in files:  # one column only: cheap even for a big table
            col = open_shard(f).read(columns=[mapping["label"]]).column(0)
            names |= {v for v in pc.unique(col).to_pylist() if v is not None}
        label_names = sorted(names)
    read = functools.partial(shard_rows, mapping=mapping, label_names=label_names)
    rows = itertools.chain.from_iterable(read(f) for f in files)
    return Source(
        name=f"parquet:{path}",
        modalities=[m for m in MODALITIES if m in mapping],
        encodings={"image": "png|jpeg", "text": "utf-8", "vector": "float32"},
        label_names=label_names,
        labelled="label" in mapping,
        rows=itertools.islice(rows, limit) if limit else rows,
        shards=files,
        shard_rows=read,
    )
