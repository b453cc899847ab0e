"""An existing table — Parquet or CSV, a file or a directory of files, local or s3:// — as an
ingest source, its columns mapped onto ours: `--map image=jpg_bytes text=caption label=cls
id=key`; `vector=features` takes a list<float> column, `vector=f0,f1,f2` several numeric ones.

String labels are class names (sorted); integer labels are named "0".."max".
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from polymodal import storage
from polymodal.data.format import DatasetError, open_shard
from polymodal.data.sources.base import RawRow, Source

FIELDS = ("image", "text", "vector", "label", "id")
MODALITIES = ("image", "text", "vector")
SUFFIXES = (".parquet", ".csv")


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    """["image=jpg", "text=caption"] → {"image": "jpg", "text": "caption"}."""
    mapping = {}
    for pair in pairs:
        ours, _, theirs = pair.partition("=")
        if ours not in FIELDS or not theirs:
            raise ValueError(f"--map {pair!r}: expected FIELD=COLUMN with FIELD one of {FIELDS}")
        if "," in theirs and ours != "vector":
            raise ValueError(f"--map {pair!r}: only vector takes several columns")
        mapping[ours] = theirs
    if not set(MODALITIES) & set(mapping):
        raise ValueError("--map must name an image, text or vector column, e.g. --map image=jpg")
    return mapping


def _columns(mapping: dict[str, str]) -> dict[str, list[str]]:
    return {ours: theirs.split(",") for ours, theirs in mapping.items()}


def _batches(uri: str, columns: list[str], floats: Sequence[str] = ()) -> Iterator[pa.RecordBatch]:
    if not uri.endswith(".csv"):
        yield from open_shard(uri).iter_batches(batch_size=1024, columns=columns)
        return
    fs, path = storage.resolve(uri)
    with fs.open_input_stream(path) as f:
        # Streamed in blocks whose types come from the first one: feature columns are read as
        # float64, so a block with "1.5" after one of "1" does not fail.
        types = {c: pa.float64() for c in floats}
        options = pacsv.ConvertOptions(include_columns=columns, column_types=types)
        yield from pacsv.open_csv(f, convert_options=options)


def _schema(uri: str) -> pa.Schema:
    if not uri.endswith(".csv"):
        return open_shard(uri).schema_arrow
    fs, path = storage.resolve(uri)
    with fs.open_input_stream(path) as f:
        return pacsv.open_csv(f).schema


def shard_rows(
    uri: str, mapping: dict[str, str], label_names: list[str] | None
) -> Iterator[RawRow]:
    cols = _columns(mapping)
    number = 0
    names = list(dict.fromkeys(itertools.chain(*cols.values())))
    features = cols["vector"] if len(cols.get("vector", [])) > 1 else []
    for batch in _batches(uri, names, features):
        for rec in batch.to_pylist():
            number += 1
            values = {m: rec[cols[m][0]] for m in MODALITIES if m in cols}
            if "vector" in cols and len(cols["vector"]) > 1:
                parts = [rec[c] for c in cols["vector"]]
                # A missing cell makes the vector bad (NaN); an all-empty one is a missing modality.
                missing = all(v is None for v in parts)
                values["vector"] = (
                    None if missing else [float("nan") if v is None else v for v in parts]
                )
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


def _check_schema(first: str, schema: pa.Schema, mapping: dict[str, str]) -> None:
    for ours, names in _columns(mapping).items():
        for theirs in names:
            if theirs not in schema.names:
                raise DatasetError(f"{first}: no column {theirs!r} for {ours} (has {schema.names})")
    if "vector" not in mapping:
        return
    names = _columns(mapping)["vector"]
    for name in names:
        kind = schema.field(name).type
        ok = (
            pa.types.is_integer(kind) or pa.types.is_floating(kind)
            if len(names) > 1
            else pa.types.is_list(kind) or pa.types.is_large_list(kind)
        )
        if not ok:
            want = "a number" if len(names) > 1 else "a list of floats"
            raise DatasetError(f"{first}: column {name!r} is {kind}, not {want}")


def table(path: str, mapping: dict[str, str], limit: int | None = None) -> Source:
    if str(path).endswith(SUFFIXES):
        files = [path]
    else:
        files = sorted(f for suffix in SUFFIXES for f in storage.list_files(path, suffix))
    if not files:
        raise DatasetError(f"{path}: no .parquet or .csv files")
    _check_schema(files[0], _schema(files[0]), mapping)
    label_names = None
    if "label" in mapping and pa.types.is_string(_schema(files[0]).field(mapping["label"]).type):
        names: set[str] = set()
        for f in files:  # one column only: cheap even for a big table
            for batch in _batches(f, [mapping["label"]]):
                names |= {v for v in pc.unique(batch.column(0)).to_pylist() if v is not None}
        label_names = sorted(names)
    read = functools.partial(shard_rows, mapping=mapping, label_names=label_names)
    rows = itertools.chain.from_iterable(read(f) for f in files)
    return Source(
        name=f"table:{path}",
        modalities=[m for m in MODALITIES if m in mapping],
        encodings={"image": "png|jpeg", "text": "utf-8", "vector": "float32"},
        label_names=label_names,
        labelled="label" in mapping,
        rows=itertools.islice(rows, limit) if limit else rows,
        shards=files,
        shard_rows=read,
    )
