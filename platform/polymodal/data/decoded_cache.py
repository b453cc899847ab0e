"""Decoded train rows kept on each node's disk, memory-mapped: a Parquet row group is decoded
once, in storage order, and every later epoch (and run) reads its arrays instead. No Ray.

A piece's directory holds one .npy per decoded column (a row per raw row, zeros where the
row was dropped), `kept` (which rows decoded) and meta.json (the dropped rows' ids and
reasons, for the bad-row counts). Its name digests the decoding settings (the root) and the
row group's uri, index and footer (`version`), so a rewritten shard is decoded anew.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = "polymodal-decoded"  # under the node's temp dir unless data.decode_cache_dir says where


def digest(value: Any) -> str:
    return hashlib.blake2b(json.dumps(value, sort_keys=True).encode(), digest_size=10).hexdigest()


@dataclass
class CachedPiece:
    """A row group decoded: arrays with a row per raw row, `kept` where the row decoded, and
    the dropped rows' raw index → (id, reason)."""

    arrays: dict[str, np.ndarray]
    kept: np.ndarray
    bad: dict[int, tuple[str, str]] = field(default_factory=dict)


def cache_root(directory: str, settings: Any) -> str:
    """The directory of one split's decoding under `directory` ("" = the temp dir)."""
    return os.path.join(directory or os.path.join(tempfile.gettempdir(), ROOT), digest(settings))


@dataclass(frozen=True)
class DecodedCache:
    root: str  # cache_root: the same path on every node, each node its own copy

    def where(self, item: dict[str, Any]) -> Path:
        return Path(self.root, digest([item["uri"], item["group"], item.get("version", "")]))

    def has(self, item: dict[str, Any]) -> bool:
        return item["group"] >= 0 and (self.where(item) / "meta.json").is_file()

    def load(self, item: dict[str, Any]) -> CachedPiece | None:
        """The piece memory-mapped, or None when this node has not decoded it yet."""
        where = self.where(item)
        try:
            meta = json.loads((where / "meta.json").read_text())
        except FileNotFoundError:
            return None
        arrays = {k: np.load(where / f, mmap_mode="r") for k, f in meta["files"].items()}
        bad = {int(i): (row_id, reason) for i, row_id, reason in meta["bad"]}
        return CachedPiece(arrays, np.load(where / "kept.npy"), bad)

    def store(self, item: dict[str, Any], piece: CachedPiece) -> None:
        """Written beside its final place and renamed there: a reader sees a whole piece or
        none, and of two nodes' tasks decoding the same piece the first one's stays."""
        where = self.where(item)
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=where.name + ".", dir=where.parent))
        try:
            files = {k: f"c{i}.npy" for i, k in enumerate(piece.arrays)}
            for k, f in files.items():
                np.save(tmp / f, piece.arrays[k])
            np.save(tmp / "kept.npy", piece.kept)
            bad = [[i, row_id, reason] for i, (row_id, reason) in piece.bad.items()]
            (tmp / "meta.json").write_text(json.dumps({"files": files, "bad": bad}))
            os.rename(tmp, where)
        except OSError:  # another task stored it first (or the disk is full): read as before
            shutil.rmtree(tmp, ignore_errors=True)
