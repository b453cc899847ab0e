"""Train's local mode (train.num_workers: 0): the loop runs in the driver, with no Train actor
started; its checkpoints are uploaded and kept as Train keeps them, and a run resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from polymodal.checkpoint import read_meta
from polymodal.config import load_config
from polymodal.train.run import fit

CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "digits.yaml"
pytestmark = pytest.mark.integration


def _train_actors() -> int:
    from ray.util.state import list_actors

    from tests.conftest import session_address

    names = ("TrainController", "RayTrainWorker")
    filters = [[("class_name", "=", n)] for n in names]
    return sum(len(list_actors(session_address(), filters=f, limit=1000)) for f in filters)


def test_a_run_in_the_driver_checkpoints_keeps_the_newest_and_resumes(
    ray_cluster, digits_dataset, tmp_path
):
    overrides = [f"data.path={digits_dataset}", f"train.storage_path={tmp_path}"]
    overrides += ["train.name=local", "train.num_workers=0", "train.checkpoint_every_steps=10"]
    actors = _train_actors()
    first = fit(load_config(CONFIG, [*overrides, "train.epochs=1"]))
    assert first.epochs_run == 1
    # 25 steps an epoch: checkpoints at steps 10 and 20 and the epoch's end; Train's
    # keep_checkpoints (2) leaves the newest two.
    kept = sorted(Path(first.run_dir).glob("checkpoint_*"))
    assert [read_meta(c).step for c in kept] == [20, 25] and str(kept[-1]) == first.checkpoint
    assert read_meta(kept[0]).position.steps == 20 and read_meta(kept[1]).position is None

    second = fit(load_config(CONFIG, [*overrides, "train.epochs=2"]))
    meta = read_meta(second.checkpoint)
    assert second.epochs_run == 1 and (meta.epoch, meta.step) == (2, 50)
    assert [row["epoch"] for row in meta.history if "val/loss" in row] == [0, 1, 2]
    assert meta.metrics["val/accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert _train_actors() == actors  # nothing of Train's started
