"""Frozen towers cost one pass: their features per row, in a side table on each node's disk
(SQLite, keyed by row), so epoch 2 on, and later runs with the same tower, skip the tower.

A frozen tower (model.<m>.tuning: freeze) is a fixed function of its input, which is fixed per
row unless augmentation changes it. The table's name is a digest of the tower's weights, the
modality's preprocessing and the dataset; its rows are the rows' sample keys. Mined negatives
(by value, no sample key) go to a second table keyed by content hash, which the rows' features
also fill. Memory stays flat: the tables live on disk; SQLite keeps a few MB of them in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from polymodal.batch import Batch, split_direction
from polymodal.config import Config
from polymodal.modalities import MODALITIES, Preprocessing, augmentations
from polymodal.models.joint import JointModel

CHUNK = 64  # rows a frozen tower embeds at once: its activations stay bounded


def cached_modalities(cfg: Config) -> list[str]:
    """The modalities whose frozen tower's features can be kept: not those that augmentation
    changes from epoch to epoch."""
    if not cfg.train.cache_frozen_features:
        return []
    augmented = set(augmentations(cfg))
    return [
        m for m in cfg.model.modalities if cfg.model.tuning(m) == "freeze" and m not in augmented
    ]


def tower_digest(tower: nn.Module, modality: str, prep: Preprocessing, dataset: str) -> str:
    """Changes when anything that changes the features does: weights, preprocessing, data."""
    h = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(tower.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    settings = {k: getattr(prep, k) for k in MODALITIES[modality].defaults}
    h.update(json.dumps([modality, settings, dataset], sort_keys=True, default=str).encode())
    return h.hexdigest()


class FeatureTable:
    """sample key → float32 features, in one SQLite file that every worker on the node shares
    (WAL: readers do not wait for the writer)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=120, isolation_level=None)
        # Switching to WAL takes the lock without waiting: the node's other workers, opening
        # the same table at the same moment, make it fail now and then.
        deadline = time.monotonic() + 120
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS f (key INTEGER PRIMARY KEY, v BLOB)")

    def get(self, keys: list[int]) -> dict[int, np.ndarray]:
        found: dict[int, np.ndarray] = {}
        for start in range(0, len(keys), 900):  # SQLite's limit on bound parameters
            part = keys[start : start + 900]
            marks = ",".join("?" * len(part))
            for key, blob in self.db.execute(f"SELECT key, v FROM f WHERE key IN ({marks})", part):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, items: dict[int, np.ndarray]) -> None:
        rows = [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items.items()]
        self.db.executemany("INSERT OR REPLACE INTO f VALUES (?, ?)", rows)

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM f").fetchone()[0]


class FrozenFeatures:
    """Replaces a batch's inputs of the frozen towers by their features: read from the
    table, computed (and stored) for the rows it lacks. The model then skips those towers
    (JointModel.precomputed)."""

    def __init__(
        self,
        model: JointModel,
        modalities: list[str],
        cfg: Config,
        prep: Preprocessing,
        dataset: str,
    ):
        root = Path(
            cfg.train.feature_cache_dir or Path(tempfile.gettempdir()) / "polymodal-features"
        )
        self.model = model
        digests = {m: tower_digest(model.encoders[m], m, prep, dataset) for m in modalities}
        self.tables = {m: FeatureTable(root / f"{m}-{digests[m]}.sqlite") for m in modalities}
        # Values by content hash (mined negatives'), created on the first batch that has some.
        self.by_value = {m: root / f"{m}-{digests[m]}-values.sqlite" for m in modalities}
        self.value_tables: dict[str, FeatureTable] = {}
        self.computed = self.read = 0

    def __call__(self, batch: Batch) -> Batch:
        if batch.sample is None:
            raise ValueError("frozen-feature cache needs the rows' sample keys in the batch")
        inputs, negatives = dict(batch.inputs), dict(batch.negatives)
        for m, table in self.tables.items():
            inputs[m] = self._features(m, table, batch.inputs[m], batch.sample.tolist())
            directions = [k for k in batch.negatives if split_direction(k)[1] == m]
            if not directions:
                continue
            if any(k not in batch.negatives_hashes for k in directions) or m not in batch.hashes:
                raise ValueError("frozen features of mined negatives need the content hashes")
            values = self.value_tables.get(m) or FeatureTable(self.by_value[m])
            self.value_tables[m] = values
            # The rows' features, by value too: most negatives are other rows' values.
            hashes = batch.hashes[m].tolist()
            values.put({h: f for h, f in zip(hashes, inputs[m].cpu().numpy()) if h})
            for k in directions:
                x = batch.negatives[k]
                flat = self._features(
                    m, values, x.flatten(0, 1), batch.negatives_hashes[k].flatten().tolist()
                )
                negatives[k] = flat.unflatten(0, x.shape[:2])
        return dataclasses.replace(batch, inputs=inputs, negatives=negatives)

    def _features(self, m: str, table: FeatureTable, x: torch.Tensor, keys: list[int]):
        """The tower's features of inputs x, read from table by key or computed and stored."""
        have = table.get(keys)
        todo = [i for i, k in enumerate(keys) if k not in have]
        fresh: dict[int, np.ndarray] = {}
        if todo:
            with torch.no_grad():  # in chunks: a batch and its negatives at once ran out of memory
                out = np.concatenate(
                    [
                        self.model.encoders[m](x[todo[lo : lo + CHUNK]]).float().cpu().numpy()
                        for lo in range(0, len(todo), CHUNK)
                    ]
                )
            fresh = {keys[i]: row for i, row in zip(todo, out)}
            table.put(fresh)
        self.computed += len(todo)
        self.read += len(keys) - len(todo)
        rows = np.stack([have[k] if k in have else fresh[k] for k in keys])
        return torch.from_numpy(rows).to(x.device)

    def stats(self) -> dict[str, Any]:
        return {"computed": self.computed, "read": self.read}
