"""Which checkpoints a run keeps: the newest intact N, the best by a metric, and every
unfinished one (an upload under way is never deleted)."""

from __future__ import annotations

import json

import pyarrow.fs as pafs

from polymodal.train.retention import Retention, kept


def test_the_newest_and_the_best_are_kept():
    metrics = {
        "checkpoint_1": {"val/accuracy": 0.9},
        "checkpoint_2": {"val/accuracy": 0.5},
        "checkpoint_3": {"step": 30},  # mid-epoch: no validation metric
        "checkpoint_4": {"val/accuracy": 0.7},
        "checkpoint_5": None,  # still uploading
    }
    assert kept(metrics, 2) == {"checkpoint_3", "checkpoint_4", "checkpoint_5"}
    best = kept(metrics, 2, "val/accuracy", "max")
    assert best == {"checkpoint_1", "checkpoint_3", "checkpoint_4", "checkpoint_5"}
    assert "checkpoint_2" in kept(metrics, 1, "val/accuracy", "min")


def test_a_run_directory_is_pruned(tmp_path):
    for i, acc in enumerate([0.9, 0.5, 0.6, 0.7]):
        d = tmp_path / f"checkpoint_{i}"
        d.mkdir()
        (d / "polymodal.json").write_text(json.dumps({"metrics": {"val/accuracy": acc}}))
    (tmp_path / "checkpoint_9").mkdir()  # unfinished
    retention = Retention(pafs.LocalFileSystem(), str(tmp_path), 2, "val/accuracy")
    assert retention.prune() == ["checkpoint_1"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["checkpoint_0", "checkpoint_2", "checkpoint_3", "checkpoint_9"]
