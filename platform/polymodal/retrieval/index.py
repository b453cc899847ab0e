"""The on-disk retrieval index: shards of L2-normalised embeddings (.npy, memory-mapped on read)
as float32, int8 codes or sign bits, with their row ids and labels, and an index.json last."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polymodal import storage
from polymodal.retrieval import ann
from polymodal.retrieval.quantize import quantize, ranges
from polymodal.retrieval.vectors import normalise

INDEX_FILE = "index.json"
FORMAT = "polymodal-index"
VERSION = 1
NO_LABEL = -1
# How vectors are stored: float32; int8 codes (4x smaller, calibrated per dimension); sign
# bits (32x smaller) searched first, with int8 codes beside them to rescore the candidates.
PRECISIONS = ("float32", "int8", "binary")
_CACHE = Path(tempfile.gettempdir()) / "polymodal-indexes"


class IndexFileError(ValueError):
    """An index that cannot be read; the message names the file."""


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _write_last(uri: str, data: bytes) -> None:
    """Locally through a rename, so a reader never sees a half-written file (an S3 PUT is
    already all or nothing)."""
    if storage.is_remote(uri):
        storage.write_bytes(uri, data)
        return
    path = Path(uri)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    partial.replace(path)


class IndexWriter:
    """Rows go in as they are embedded; a shard is written each shard_rows rows, index.json
    after the last one. Shards go under a fresh parts-* prefix and the previous build's are
    removed only once the new index.json is in place: an interrupted build leaves the old
    index (or none) readable, never a mix."""

    def __init__(
        self,
        out: str,
        *,
        model: str,
        modality: str,
        dim: int,
        shard_rows: int = 100_000,
        info: dict[str, Any] | None = None,
        precision: str = "float32",
        span: np.ndarray | None = None,
        kind: str = "exact",
    ):
        """precision: one of PRECISIONS. span: int8 ranges [2, dim] (the checkpoint's
        calibration); without, the first shard's rows calibrate. kind: exact search, or an
        approximate one (retrieval.ann.KINDS) over float32 vectors, a FAISS index per shard."""
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if kind not in ann.KINDS:
            raise ValueError(f"kind must be one of {ann.KINDS}, got {kind!r}")
        if kind != "exact" and precision != "float32":
            raise ValueError(f"a {kind} index holds float32 vectors, not {precision}")
        self.out = str(out).rstrip("/")
        self.meta = {"model": model, "modality": modality, "dim": int(dim), **(info or {})}
        self.meta["precision"] = precision
        self.meta["kind"] = kind
        self.span = None if span is None else np.asarray(span, np.float32)
        self.shard_rows = shard_rows
        self.parts = f"parts-{uuid.uuid4().hex[:12]}"
        self.shards: list[dict[str, Any]] = []
        self.labelled: bool | None = None
        self.pending: list[tuple[list[str], np.ndarray, np.ndarray | None]] = []
        self.pending_rows = 0
        self.bytes_written = 0

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.shards) + self.pending_rows

    def add(self, ids: list[str], vectors: np.ndarray, labels: np.ndarray | None = None) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.meta["dim"]:
            raise ValueError(f"vectors of shape {vectors.shape}, expected [n, {self.meta['dim']}]")
        if len(ids) != len(vectors) or (labels is not None and len(labels) != len(vectors)):
            raise ValueError(f"{len(ids)} ids, {len(vectors)} vectors: lengths differ")
        if not np.isfinite(vectors).all():
            bad = ids[int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])]
            raise ValueError(f"row {bad}: embedding is not finite (NaN or inf)")
        if self.labelled is None:
            self.labelled = labels is not None
        elif self.labelled != (labels is not None):
            raise ValueError("labels given for some rows and not others")
        self.pending.append((list(ids), normalise(vectors), labels))
        self.pending_rows += len(ids)
        while self.pending_rows >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, rows: int) -> None:
        ids = [i for part in self.pending for i in part[0]]
        vectors = np.concatenate([part[1] for part in self.pending])
        labels = (
            np.concatenate([np.asarray(part[2], dtype=np.int64) for part in self.pending])
            if self.labelled
            else None
        )
        rest = (ids[rows:], vectors[rows:], labels[rows:] if labels is not None else None)
        self.pending = [rest] if len(rest[0]) else []
        self.pending_rows = len(rest[0])
        name = f"{self.parts}/{len(self.shards):05d}"
        shard: dict[str, Any] = {
            "rows": rows,
            "vectors": f"{name}.vectors.npy",
            "ids": f"{name}.ids.npy",
        }
        # Fixed-width UTF-8 bytes: memory-mappable like the vectors, one row read per hit.
        files = {"vectors": vectors[:rows], "ids": np.array([i.encode() for i in ids[:rows]])}
        precision = self.meta["precision"]
        if precision != "float32":
            if self.span is None:
                self.span = ranges(vectors[:rows])
            codes = quantize(vectors[:rows], "int8", self.span)
            if precision == "int8":
                files["vectors"] = codes
            else:
                files["vectors"] = quantize(vectors[:rows], "ubinary")
                shard["rescore"] = f"{name}.rescore.npy"
                files["rescore"] = codes
        if self.meta["kind"] != "exact":
            shard["ann_params"] = ann.default_params(self.meta["kind"], rows)
            shard["ann"] = f"{name}.{self.meta['kind']}.faiss"
            built = ann.build(vectors[:rows], self.meta["kind"], shard["ann_params"])
            storage.write_bytes(storage.join(self.out, shard["ann"]), built)
            self.bytes_written += len(built)
        if labels is not None:
            shard["labels"] = f"{name}.labels.npy"
            files["labels"] = labels[:rows]
        for key, array in files.items():
            data = _npy(array)
            storage.write_bytes(storage.join(self.out, shard[key]), data)
            self.bytes_written += len(data)
        self.shards.append(shard)

    def finish(self) -> dict[str, Any]:
        """Write the last shard and index.json, then remove older builds' shards."""
        if self.pending_rows:
            self._flush(self.pending_rows)
        if not self.shards:
            raise ValueError(f"{self.out}: no rows to index; nothing written")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            **self.meta,
            "rows": sum(s["rows"] for s in self.shards),
            "metric": "cosine",
            **({"ranges": self.span.tolist()} if self.span is not None else {}),
            "labelled": bool(self.labelled),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "shards": self.shards,
        }
        data = json.dumps(meta, indent=2).encode()
        _write_last(storage.join(self.out, INDEX_FILE), data)
        self.bytes_written += len(data)
        for old in storage.list_dirs(self.out):
            if old.startswith("parts-") and old != self.parts:
                storage.delete_dir(storage.join(self.out, old))
        return meta


def rebuildable(names: list[str]) -> bool:
    """Whether a directory holding `names` is an index, or an interrupted build of one, which
    a build into it replaces; anything else there is not a build's to mix with or remove."""
    return INDEX_FILE in names or all(n.startswith("parts-") for n in names)


def read_index_meta(uri: str) -> dict[str, Any]:
    """index.json of the index at uri, checked for the fields readers rely on."""
    file = storage.join(uri, INDEX_FILE)
    if not storage.is_file(file):
        raise FileNotFoundError(f"{file}: missing; not an index (or its build did not finish)")
    try:
        meta = json.loads(storage.read_bytes(file))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFileError(f"{file}: invalid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IndexFileError(f"{file}: not a {FORMAT} file")
    if meta.get("version") != VERSION:
        raise IndexFileError(f"{file}: version {meta.get('version')}, expected {VERSION}")
    missing = [k for k in ("model", "modality", "dim", "rows", "shards") if k not in meta]
    if missing:
        raise IndexFileError(f"{file}: missing {missing}")
    if meta.get("precision", "float32") not in PRECISIONS:
        raise IndexFileError(f"{file}: precision {meta['precision']!r}, not one of {PRECISIONS}")
    if meta.get("precision", "float32") != "float32" and "ranges" not in meta:
        raise IndexFileError(f"{file}: {meta['precision']} vectors without their int8 ranges")
    if sum(s.get("rows", 0) for s in meta["shards"]) != meta["rows"]:
        raise IndexFileError(f"{file}: shard rows do not add up to rows={meta['rows']}")
    return meta


@dataclass
class Shard:
    # [rows, dim] float32 | [rows, dim] int8 | [rows, ceil(dim / 8)] uint8 bits; memory-mapped
    vectors: np.ndarray
    ids: np.ndarray  # [rows] fixed-width UTF-8 bytes, memory-mapped
    labels: np.ndarray | None  # [rows] int64 (NO_LABEL where the row had none)
    rescore: np.ndarray | None = None  # binary: [rows, dim] int8 codes, read for candidates
    ann: Any = None  # hnsw / ivf: the shard's FAISS index


@dataclass
class Index:
    uri: str
    meta: dict[str, Any]
    shards: list[Shard]
    starts: np.ndarray = field(init=False)  # first global row of each shard

    def __post_init__(self):
        sizes = [len(s.vectors) for s in self.shards]
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def rows(self) -> int:
        return int(self.meta["rows"])

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "exact")

    @property
    def precision(self) -> str:
        return self.meta.get("precision", "float32")

    @property
    def span(self) -> np.ndarray | None:
        return np.asarray(self.meta["ranges"], np.float32) if "ranges" in self.meta else None

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shard = np.searchsorted(self.starts, positions, side="right") - 1
        return shard, positions - self.starts[shard]

    def ids(self, positions) -> list[str]:
        """Row ids at global row positions (shards in order)."""
        shards, rows = self.locate(np.asarray(positions, dtype=np.int64).ravel())
        return [self.shards[s].ids[r].decode() for s, r in zip(shards, rows)]

    def labels(self, positions) -> list[int | None]:
        shards, rows = self.locate(np.asarray(positions, dtype=np.int64).ravel())
        out: list[int | None] = []
        for s, r in zip(shards, rows):
            labels = self.shards[s].labels
            value = int(labels[r]) if labels is not None else NO_LABEL
            out.append(None if value == NO_LABEL else value)
        return out


def local_copy(uri: str, meta: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    """The index's directory on local disk: itself, or a cached download of an s3:// index
    (keyed by its index.json's version, so a rebuilt index is fetched again)."""
    if not storage.is_remote(uri):
        return Path(uri)
    key = f"{uri}@{storage.version(storage.join(uri, INDEX_FILE))}"
    local = Path(cache_dir or _CACHE) / hashlib.sha1(key.encode()).hexdigest()[:16]
    names = ("vectors", "ids", "labels", "rescore", "ann")
    files = [s[n] for s in meta["shards"] for n in names if s.get(n)]
    by_dir: dict[str, list[str]] = {}
    for f in files:
        if not (local / f).is_file():
            parent, _, name = f.rpartition("/")
            by_dir.setdefault(parent, []).append(name)
    for parent, missing in by_dir.items():
        storage.download(storage.join(uri, parent), missing, local / parent)
    return local


def _load(file: Path, dtype_kind: str, rows: int, dim: int | None = None) -> np.ndarray:
    if not file.is_file():
        raise IndexFileError(f"{file}: missing")
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # bad header, truncated data
        raise IndexFileError(f"{file}: cannot read: {exc}") from exc
    shape = (rows, dim) if dim is not None else (rows,)
    if array.dtype.kind != dtype_kind or array.shape != shape:
        raise IndexFileError(
            f"{file}: {array.dtype} {array.shape}, expected kind '{dtype_kind}' {shape}"
        )
    return array


def open_index(uri: str | Path, cache_dir: str | Path | None = None) -> Index:
    """An index, local or s3://, with every shard memory-mapped: searching it reads the
    vectors from the page cache, so an index larger than memory works."""
    uri = str(uri)
    meta = read_index_meta(uri)
    local = local_copy(uri, meta, cache_dir)
    shards = []
    precision = meta.get("precision", "float32")
    kind, dtype, width = {
        "float32": ("f", np.float32, meta["dim"]),
        "int8": ("i", np.int8, meta["dim"]),
        "binary": ("u", np.uint8, -(-meta["dim"] // 8)),
    }[precision]
    for s in meta["shards"]:
        vectors = _load(local / s["vectors"], kind, s["rows"], width)
        if vectors.dtype != dtype:
            raise IndexFileError(f"{local / s['vectors']}: {vectors.dtype}, expected {dtype}")
        ids = _load(local / s["ids"], "S", s["rows"])
        labels = _load(local / s["labels"], "i", s["rows"]) if s.get("labels") else None
        rescore = None
        if precision == "binary":
            rescore = _load(local / s["rescore"], "i", s["rows"], meta["dim"])
        graph = None
        if s.get("ann"):
            file = local / s["ann"]
            try:
                graph = ann.load(file.read_bytes(), meta["kind"], s["ann_params"])
            except (OSError, RuntimeError) as exc:  # missing, truncated: FAISS says which
                raise IndexFileError(f"{file}: cannot read: {exc}") from exc
        shards.append(Shard(vectors, ids, labels, rescore, graph))
    return Index(uri, meta, shards)
