"""A folder (local or s3://) with an index (index.csv or index.jsonl) whose columns name
image files, text, label.

Columns: `image` (path relative to the index), `text`, `label` (an integer or a class name),
optional `id` and `split`. Labels are names unless every one is a plain integer.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from polymodal import storage
from polymodal.data.sources.base import RawRow, Source

INDEX_NAMES = ("index.csv", "index.jsonl")


def _find_index(path: str) -> str:
    if path.endswith(INDEX_NAMES) and storage.is_file(path):
        return path
    if storage.is_file(path):
        raise ValueError(
            f"SOURCE {path}: a file ingest cannot read; give a folder with "
            f"{' or '.join(INDEX_NAMES)}, a .parquet or .csv table with --map, or .tar shards"
        )
    for name in INDEX_NAMES:
        if storage.is_file(storage.join(path, name)):
            return storage.join(path, name)
    raise FileNotFoundError(f"{path}: no index file (expected one of {', '.join(INDEX_NAMES)})")


def _read_records(index: str) -> list[dict[str, Any]]:
    text = storage.read_bytes(index).decode("utf-8")
    if index.endswith(".jsonl"):
        records = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                rec = {"__error__": f"invalid JSON: {exc.msg}"}
            if not isinstance(rec, dict):
                rec = {"__error__": "line is not a JSON object"}
            rec["__line__"] = n
            records.append(rec)
        return records
    rows = csv.DictReader(io.StringIO(text, newline=""))
    return [{**r, "__line__": n} for n, r in enumerate(rows, start=2)]


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()


def folder(path: str, limit: int | None = None) -> Source:
    index = _find_index(str(path).rstrip("/"))
    root = index.rsplit("/", 1)[0]
    records = _read_records(index)[:limit]
    columns = {k for r in records for k in r}
    modalities: list[str] = [m for m in ("image", "text") if m in columns]
    if not modalities:
        raise ValueError(f"{index}: no 'image' or 'text' column (columns: {sorted(columns)})")
    raw_labels = [r["label"] for r in records if r.get("label") not in (None, "")]
    by_int = bool(raw_labels) and all(_is_int(v) for v in raw_labels)
    names = None
    if raw_labels and not by_int:
        names = sorted({v for v in raw_labels if isinstance(v, str) and not _is_int(v)})
    elif by_int:  # integer labels: the class names are the integers themselves
        names = [str(i) for i in range(max(int(v) for v in raw_labels) + 1)]

    def label_of(value: Any) -> tuple[int | None, str | None]:
        if value in (None, ""):
            return None, None
        if by_int:
            n = int(value)
            return (n, None) if n >= 0 else (None, f"bad label {value!r}: negative")
        if isinstance(value, str) and not _is_int(value):
            assert names is not None  # a class name among the labels made the names
            return names.index(value), None
        return None, f"bad label {value!r}: expected an integer >= 0 or a class name"

    def rows() -> Iterator[RawRow]:
        for rec in records:
            line = rec["__line__"]
            rid = str(rec.get("id") or f"row-{line:07d}")
            values: dict[str, Any] = {m: None for m in modalities}
            error = rec.get("__error__")
            label, label_error = (None, None) if error else label_of(rec.get("label"))
            error = error or label_error
            text = rec.get("text")
            if not error and text not in (None, ""):
                values["text"] = str(text)
            image = rec.get("image")
            if not error and image not in (None, ""):
                try:  # one request per image on S3, not two
                    values["image"] = storage.read_bytes(storage.join(root, str(image)))
                except OSError:  # missing, a directory, unreadable
                    error = f"missing file '{image}'"
            split = rec.get("split") or None
            if split not in (None, "train", "val"):
                error = error or f"bad split {split!r}: expected train or val"
            yield RawRow(line, rid, values, label, split=split, error=error)

    return Source(
        name=f"folder:{index}",
        modalities=modalities,
        encodings={"image": "png|jpeg", "text": "utf-8"},
        label_names=names if names is not None else None,
        labelled=bool(raw_labels),
        rows=rows(),
        total=len(records),
    )
