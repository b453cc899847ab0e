"""A training worker killed with SIGKILL mid-run: Ray Train restarts the worker group, the
run resumes from its latest checkpoint (never from scratch), and finishes with every epoch
trained exactly once in its history; the sample ids each worker logged show what was
repeated (only the interrupted epoch's part) and that nothing was skipped."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from polymodal.checkpoint import read_meta
from polymodal.train.run import fit
from tests.reliability.samples import (
    check_samples,
    faulted_run_config,
    split_keys,
    wait_until_mid_epoch,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def _kill_a_worker_mid_epoch_2(samples: Path, killed: list):
    from ray.util.state import list_actors

    if not wait_until_mid_epoch(samples, 2):
        return
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    if workers:
        os.kill(workers[-1].pid, signal.SIGKILL)
        killed.append(workers[-1].pid)


def test_a_killed_worker_is_restarted_and_the_run_resumes(ray_cluster, digits_dataset, tmp_path):
    cfg = faulted_run_config(digits_dataset, tmp_path, "killed")
    killed: list[int] = []
    killer = threading.Thread(
        target=_kill_a_worker_mid_epoch_2, args=(tmp_path / "samples", killed)
    )
    killer.start()
    result = fit(cfg)  # Ray Train wants the driver's main thread
    killer.join()
    assert killed, "no worker was alive to kill"
    meta = read_meta(result.checkpoint)
    assert meta["epoch"] == 3
    # The restarted group began after the last checkpoint, not at epoch 1.
    assert 1 <= result.epochs_run <= 2
    epochs = [row["epoch"] for row in meta["history"] if "val/loss" in row]
    assert epochs == [0, 1, 2, 3]  # the untrained baseline, then each epoch once
    steps_per_epoch = meta["step"] // 3
    assert [row["step"] for row in meta["history"] if "val/loss" in row][1:] == [
        steps_per_epoch * e for e in (1, 2, 3)
    ]
    assert result.metrics["val/accuracy"] > 0.5
    # drop_last leaves fewer than a batch per worker; Ray's equal split up to a row per worker
    lost_max = cfg.train.batch_size + cfg.train.num_workers
    start = 3 - result.epochs_run + 1
    repeated = check_samples(
        tmp_path / "samples", split_keys(digits_dataset, "train"), 3, start, lost_max
    )
    print(f"worker kill: resumed at epoch {start}, {repeated} samples repeated, none skipped")
