"""A whole worker node of a 3-node local cluster removed mid-run (raylet and its workers
killed): Ray Train restarts the group on the surviving node and the run resumes from its
latest checkpoint, with the same accounting of epochs and samples as a killed worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polymodal.checkpoint import read_meta
from tests.conftest import REPO
from tests.reliability.samples import check_samples, split_keys

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

RUNNER = Path(__file__).with_name("node_kill_cluster.py")


def test_a_removed_node_is_survived(digits_dataset, tmp_path):
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])  # tests.* imports
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, str(RUNNER), str(digits_dataset), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Ray forwards workers' lines to the driver's stdout late: the result is the last JSON line.
    out = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert len(out["removed"]) == 1, "no node held the training workers"
    assert out["alive_nodes"] == 2  # the head and the surviving worker node
    meta = read_meta(out["checkpoint"])
    assert meta.epoch == 3
    assert 1 <= out["epochs_run"] <= 2  # resumed, not restarted from scratch
    epochs = [row["epoch"] for row in meta.history if "val/loss" in row]
    assert epochs == [0, 1, 2, 3]
    assert out["accuracy"] > 0.5
    start = 3 - out["epochs_run"] + 1
    batch, workers = meta.run_config().train.batch_size, 2
    repeated = check_samples(
        tmp_path / "samples", split_keys(digits_dataset, "train"), 3, start, batch + workers
    )
    print(f"node kill: resumed at epoch {start}, {repeated} samples repeated, none skipped")
