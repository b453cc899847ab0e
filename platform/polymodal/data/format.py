"""The on-disk dataset format: manifest.json + Parquet shards per split.

DatasetWriter stages everything in a sibling directory and writes the manifest last, then
renames into place, so a half-written dataset never looks complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from polymodal import storage
from polymodal.data.decode import NEGATIVES_PREFIX
from polymodal.modalities import MODALITIES

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ROW_GROUP_ROWS = 1024  # Parquet row groups are the unit of parallel reading and decoding


class DatasetError(ValueError):
    """A dataset that cannot be read or written; the message names the file."""


@dataclass
class Manifest:
    modalities: dict[str, dict[str, Any]]  # name -> {"encoding": "png" | "utf-8" | ...}
    label_names: list[str] | None
    # split -> {"rows": n, "shards": [{"path", "rows", "sha256"}]}
    splits: dict[str, dict[str, Any]]
    source: str = ""
    schema_version: int = SCHEMA_VERSION
    # Source extras, e.g. "caption_templates" used to build zero-shot prompts.
    extra: dict[str, Any] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> rows skipped at ingest

    def rows(self, split: str) -> int:
        return self.splits[split]["rows"] if split in self.splits else 0

    @property
    def num_labels(self) -> int | None:
        """Classes a label must fall in; None for an unlabelled dataset."""
        return len(self.label_names) if self.label_names else None


def negatives_column(key: str) -> str:
    """The Parquet column of a direction's mined negatives: each row's candidates' raw values
    (by value, so they never dangle), a list of the negatives' modality's column type."""
    return NEGATIVES_PREFIX + key


def mined(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """The dataset's mined directions ("text->image") -> {anchor, modality, num_negatives, ...}
    (extra["negatives"], written by `polymodal mine`); {} for an ordinary dataset."""
    return dict(manifest.extra.get("negatives") or {})


def arrow_schema(
    modalities: list[str], labelled: bool, negatives: dict[str, str] | None = None
) -> pa.Schema:
    """The shards' schema; negatives: each mined direction -> the negatives' modality."""
    fields = [pa.field("id", pa.string(), nullable=False)]
    # Each modality's column type: docs/architecture.md, "Dataset on disk".
    fields += [pa.field(m, MODALITIES[m].arrow_type) for m in modalities]
    if labelled:
        fields.append(pa.field("label", pa.int64()))
    for key, modality in (negatives or {}).items():
        fields.append(pa.field(negatives_column(key), pa.list_(MODALITIES[modality].arrow_type)))
    return pa.schema(fields)


def manifest_schema(manifest: Manifest) -> pa.Schema:
    """The schema every shard of the dataset has (mined negatives' columns included)."""
    negatives = {k: d["modality"] for k, d in mined(manifest).items()}
    return arrow_schema(list(manifest.modalities), manifest.label_names is not None, negatives)


def split_of(row_id: str, val_fraction: float) -> str:
    """Deterministic split by id: the same id lands in the same split on every run."""
    h = int.from_bytes(hashlib.sha1(row_id.encode()).digest()[:8], "big")
    return "val" if h / 2**64 < val_fraction else "train"


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of a dataset directory, local or s3://."""
    file = storage.join(path, MANIFEST)
    if not storage.is_file(file):
        raise DatasetError(
            f"{path}: no {MANIFEST} — not a polymodal dataset, or its ingest did not finish"
        )
    try:
        data = json.loads(storage.read_bytes(file))
        manifest = Manifest(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise DatasetError(f"{file}: invalid manifest: {exc}") from exc
    if manifest.schema_version != SCHEMA_VERSION:
        raise DatasetError(
            f"{file}: schema_version {manifest.schema_version}, this polymodal reads "
            f"{SCHEMA_VERSION}"
        )
    return manifest


def shard_paths(path: str | Path, manifest: Manifest, split: str) -> list[str]:
    """The split's shard files, as local paths or s3:// URIs like `path`."""
    if split not in manifest.splits:
        raise DatasetError(f"{path}: no split '{split}' (has {sorted(manifest.splits)})")
    return [  # shards read in place (webdataset) are listed by their full path
        s["path"]
        if "://" in s["path"] or s["path"].startswith("/")
        else storage.join(path, s["path"])
        for s in manifest.splits[split]["shards"]
    ]


def open_shard(uri: str) -> pq.ParquetFile:
    fs, path = storage.resolve(uri)
    return pq.ParquetFile(fs.open_input_file(path))


def schema_difference(actual: pa.Schema, expected: pa.Schema) -> str | None:
    """What differs between a shard's schema and the manifest's, in words; None if equal."""
    if actual.equals(expected):
        return None
    diffs = []
    for f in expected:
        if f.name not in actual.names:
            diffs.append(f"no column '{f.name}'")
        elif not actual.field(f.name).type.equals(f.type):
            diffs.append(f"column '{f.name}' is {actual.field(f.name).type}, expected {f.type}")
    diffs += [f"extra column '{n}'" for n in actual.names if n not in expected.names]
    return "; ".join(diffs) or f"schema {actual} differs from {expected}"


def row_groups(
    path: str | Path, manifest: Manifest, split: str
) -> list[tuple[str, list[int], str]]:
    """(shard, rows of each row group, its footer's digest: a rewritten shard's differs) for
    each of the split's shards, from their footers (not their rows). Fails on the first shard
    that is missing or whose schema disagrees with the manifest, naming it: before training,
    not hours into it."""
    expected = manifest_schema(manifest)
    uris = shard_paths(path, manifest, split)

    def footer(uri: str) -> tuple[str | None, list[int], str]:
        try:
            file = open_shard(uri)
        except (OSError, pa.ArrowInvalid) as exc:
            return f"cannot read it ({exc})", [], ""
        meta = file.metadata
        groups = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        version = hashlib.blake2b(repr(meta.to_dict()).encode(), digest_size=8).hexdigest()
        return schema_difference(file.schema_arrow, expected), groups, version

    with ThreadPoolExecutor(max_workers=16) as pool:  # S3: one request per footer, in parallel
        footers = list(pool.map(footer, uris))
    for uri, (problem, _, _) in zip(uris, footers):
        if problem:
            raise DatasetError(f"shard {uri}: {problem} (manifest of {path})")
    return [(uri, groups, version) for uri, (_, groups, version) in zip(uris, footers)]


class ShardWriter:
    """Buffers rows per split and writes fixed-size Parquet shards under `root`; several can
    write into one dataset side by side (parallel ingest) when their `tag`s differ."""

    def __init__(self, root: str, prefix: str, schema: pa.Schema, rows_per_shard: int, tag=""):
        self.root, self.prefix, self.tag = root, prefix, tag
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.buffers: dict[str, list[dict[str, Any]]] = {}
        self.shards: dict[str, list[dict[str, Any]]] = {}
        self.bytes = 0

    def add(self, split: str, row: dict[str, Any]) -> None:
        buf = self.buffers.setdefault(split, [])
        buf.append(row)
        if len(buf) >= self.rows_per_shard:
            self._flush(split)

    def _flush(self, split: str) -> None:
        rows = self.buffers.get(split) or []
        if not rows:
            return
        shards = self.shards.setdefault(split, [])
        rel = f"{self.prefix}{split}/part-{self.tag}{len(shards):05d}.parquet"
        buf = io.BytesIO()
        table = pa.Table.from_pylist(rows, schema=self.schema)
        pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS)
        data = buf.getvalue()
        storage.write_bytes(storage.join(self.root, rel), data)
        self.bytes += len(data)
        # The checksum lets `polymodal data validate` tell a damaged shard from a good one.
        shards.append({"path": rel, "rows": len(rows), "sha256": hashlib.sha256(data).hexdigest()})
        self.buffers[split] = []

    def close(self) -> dict[str, list[dict[str, Any]]]:
        """Flush what is buffered; the shards written, per split."""
        for split in list(self.buffers):
            self._flush(split)
        return self.shards


class DatasetWriter:
    """Stages a dataset's shards (in a sibling directory, or a fresh prefix on S3) and makes
    them a dataset only at finish(), by writing the manifest last."""

    def __init__(
        self,
        out: str | Path,
        modalities: list[str],
        encodings: dict[str, str],
        label_names: list[str] | None,
        labelled: bool,
        rows_per_shard: int = 10_000,
        overwrite: bool = False,
        negatives: dict[str, str] | None = None,
    ):
        self.remote = storage.is_remote(out)
        if self.remote:
            # S3 has no rename: shards go under a prefix of their own and the manifest,
            # written last in one PUT, is what makes them a dataset.
            self.out = str(out).rstrip("/")
            if storage.exists(storage.join(self.out, MANIFEST)) and not overwrite:
                raise DatasetError(f"{self.out} already exists; pass --overwrite to replace it")
            self.root, self.prefix = self.out, f"parts-{uuid.uuid4().hex[:8]}/"
        else:
            self.dir = Path(out)  # local: a directory (renamed into place), not a URI
            if self.dir.exists() and not overwrite:
                raise DatasetError(f"{self.dir} already exists; pass --overwrite to replace it")
            self.stage = self.dir.parent / f".{self.dir.name}.partial-{uuid.uuid4().hex[:8]}"
            self.stage.mkdir(parents=True)
            self.root, self.prefix = str(self.stage), ""
        self.modalities = modalities
        self.encodings = encodings
        self.label_names = label_names
        self.schema = arrow_schema(modalities, labelled, negatives)
        self.rows_per_shard = rows_per_shard
        self.shards: dict[str, list[dict[str, Any]]] = {}
        self.rows = self.shard_writer()

    def shard_writer(self, tag: str = "") -> ShardWriter:
        """A writer of shards into this dataset's staging area (picklable: Ray tasks use it)."""
        return ShardWriter(self.root, self.prefix, self.schema, self.rows_per_shard, tag)

    def add(self, split: str, row: dict[str, Any]) -> None:
        self.rows.add(split, row)

    def add_shards(self, shards: dict[str, list[dict[str, Any]]]) -> None:
        for split, entries in shards.items():
            self.shards.setdefault(split, []).extend(entries)

    def finish(self, source: str, extra: dict[str, Any], rejected: dict[str, int]) -> Manifest:
        self.add_shards(self.rows.close())
        for entries in self.shards.values():  # parallel writers finish in any order
            entries.sort(key=lambda e: e["path"])
        manifest = Manifest(
            modalities={m: {"encoding": self.encodings[m]} for m in self.modalities},
            label_names=self.label_names,
            splits={
                s: {"rows": sum(x["rows"] for x in shards), "shards": shards}
                for s, shards in sorted(self.shards.items())
            },
            source=source,
            extra=extra,
            rejected=rejected,
        )
        text = json.dumps(asdict(manifest), indent=2)
        if self.remote:
            storage.write_bytes(storage.join(self.out, MANIFEST), text.encode())
            # Only now is the old dataset (if any) unreferenced: remove its shards.
            for name in storage.list_dirs(self.out):
                if f"{name}/" != self.prefix:
                    storage.delete_dir(storage.join(self.out, name))
            return manifest
        # The manifest is written last: a directory without it is not a dataset.
        (self.stage / MANIFEST).write_text(text)
        if self.dir.exists():  # --overwrite: move the old one aside only now the new one is whole
            old = self.dir.parent / f".{self.dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.dir, old)
            os.replace(self.stage, self.dir)
            shutil.rmtree(old)
        else:
            os.replace(self.stage, self.dir)
        return manifest

    def abort(self) -> None:
        if self.remote:
            storage.delete_dir(storage.join(self.out, self.prefix.rstrip("/")))
        else:
            shutil.rmtree(self.stage, ignore_errors=True)


def read_columns(
    path: str | Path, manifest: Manifest, modalities: list[str], with_negatives: bool = True
) -> list[str]:
    """The columns a model over `modalities` reads: those of them the dataset holds (a source
    of a mixture holds some only; the others read as missing), plus label if any, plus (with
    negatives) the mined negatives of each direction whose anchor and modality it has."""
    held = [m for m in modalities if m in manifest.modalities]
    if not held:
        raise DatasetError(
            f"{path}: dataset has none of {list(modalities)} (has {list(manifest.modalities)})"
        )
    directions = negatives_sizes(manifest, modalities) if with_negatives else {}
    negatives = [negatives_column(k) for k in directions]
    return held + (["label"] if manifest.label_names is not None else []) + negatives


def negatives_sizes(manifest: Manifest, modalities: list[str]) -> dict[str, int]:
    """K of each mined direction a model over `modalities` reads (read_columns' negatives):
    every decoded block pads its rows' negatives to it, so blocks stack."""
    return {
        k: int(d["num_negatives"])
        for k, d in mined(manifest).items()
        if d["anchor"] in modalities and d["modality"] in modalities
    }


def is_webdataset(manifest: Manifest) -> bool:
    return manifest.extra.get("format") == "webdataset"
