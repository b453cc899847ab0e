"""benchmarks/gpu.py, the check a session with a GPU runs: its --dry-run (tiny towers on the
CPU, trained and served on a cluster of its own) still works end to end, and without a device
it refuses instead of measuring a CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu.py"


def test_the_gpu_check_runs_dry_on_the_cpu():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    cases = ["device", "precision", "precision", "largest_batch", "train_serve"]
    assert [r["case"] for r in rows] == cases + ["serve"] * 5
    assert rows[0]["device"] == "cpu"
    assert {r["loss"] for r in rows[1:3]} == {"infonce", "sigmoid"}
    for row in rows[1:3]:
        assert set(row["samples_per_s"]) == {"fp32", "bf16"}
        assert all(v > 0 for v in row["samples_per_s"].values())
        assert row["vs_fp32"]["fp32"] == 1.0
    largest = rows[3]
    for variant in ("plain", "grad_cache", "activation_checkpointing"):
        assert largest[variant]["batch"] == largest["tried_up_to"]  # a CPU has room
    trained = rows[4]
    assert (
        trained["samples_per_s"]["bare_loop"] > 0
        and trained["samples_per_s"]["polymodal_train"] > 0
    )
    assert trained["serve"]["answered"] == 16  # every request got its one embedding
    served = rows[5]  # polymodal serve with the MiniLM text tower, then 4 loads per route
    assert served["first_embedding_s"] > 0 and set(served["offline_items_per_s"]) == {
        "image",
        "text",
    }
    assert [(r["route"], r["load"]) for r in rows[6:]] == [
        (m, load) for m in ("image", "text") for load in ([1, 1], [8, 32])
    ]
    # A loaded host may answer nothing inside a dry run's 0.75 s window, but every client's
    # requests are answered, without error.
    assert all(r["errors"] == 0 and r["answered"] >= r["load"][0] for r in rows[6:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="here it runs the real check")
def test_without_a_device_it_refuses():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr
