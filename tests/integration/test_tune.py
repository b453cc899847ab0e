"""`polymodal tune` on real digits with a real Ray cluster: ASHA stops weak trials, the
sweep writes its table, plot and best/, and an interrupted sweep resumes."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from polymodal import storage
from polymodal.config import load_config
from polymodal.run_meta import meta_of
from polymodal.tune.sweep import run_sweep

CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tune-digits.yaml"
SUITE = "eval.suites=[{name: mteb, kind: mteb, tasks: ['zeroshot:image']}]"
pytestmark = pytest.mark.integration


def _config(dataset, storage, name: str, extra: list[str]):
    overrides = [
        f"data.path={dataset}",
        f"train.storage_path={storage}",
        f"train.name={name}",
        "train.batch_size=128",
        *extra,
    ]
    cfg = load_config(CONFIG, overrides)
    return cfg, overrides


def test_sweep_on_s3_stops_weak_trials_and_writes_results(ray_cluster, s3_endpoint, digits_dataset):
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="sweeps")
    cfg, _ = _config(
        digits_dataset,
        "s3://sweeps/runs",
        "sweep",
        ["train.epochs=2", "tune.num_samples=1", "tune.max_concurrent_trials=1"]
        # mid-epoch checkpoints: their reports carry no val metric, and reach Train only
        + ["train.checkpoint_every_steps=8"]
        # the metric: an mteb suite's score (mteb's zero-shot on the val rows, every epoch)
        + [SUITE, "tune.metric=suite/mteb/main_score"],
    )
    # Without the contrastive term text and images never align: zero-shot stays near
    # chance, so ASHA must stop that trial at the first rung, where the good one (run first,
    # one trial at a time) recorded its result.
    cfg.tune.space = {
        "objective.weights.contrastive": {"grid": [1.0, 0.0]},
        "objective.weights.reconstruction": {"loguniform": [0.01, 1.0]},
    }
    result = run_sweep(cfg, progress=False)

    rows = result.rows
    assert len(rows) == 2
    reasons = [r["stop_reason"] for r in rows]
    assert reasons == ["completed", "stopped early (asha)"], rows
    assert [r["epochs_run"] for r in rows] == [2, 1]
    metric = "best suite/mteb/main_score"
    good = [r[metric] for r in rows if r["objective.weights.contrastive"] == 1.0]
    bad = [r[metric] for r in rows if r["objective.weights.contrastive"] == 0.0]
    assert min(good) > max(bad), rows

    sweep = result.sweep_dir
    assert sweep == "s3://sweeps/runs/sweep"
    table = pq.read_table(io.BytesIO(storage.read_bytes(f"{sweep}/trials.parquet")))
    assert table.num_rows == 2 and "objective.weights.reconstruction" in table.column_names
    assert storage.read_bytes(f"{sweep}/trials.csv").count(b"\n") == 3
    png = storage.read_bytes(f"{sweep}/metric_vs_space.png")
    assert png[:4] == b"\x89PNG" and len(png) > 5_000

    # best/ is the best trial's best checkpoint, and it evaluates to the recorded metric
    assert result.best["objective.weights.contrastive"] == 1.0
    assert result.best[metric] == max(good)
    best = f"{sweep}/best"
    assert result.best_checkpoint == best
    meta = meta_of(best)
    assert meta.run_config().objective.weights.contrastive == 1.0
    # ... and `polymodal eval s3://.../best --mteb zeroshot:image` scores it the same
    scores = evaluate_mteb_checkpoint(best, str(digits_dataset))
    assert scores["digits-zeroshot-image"]["main_score"] == pytest.approx(
        result.best[metric], abs=1e-6
    )


def evaluate_mteb_checkpoint(checkpoint: str, dataset: str) -> dict:
    from polymodal.inference.model import LoadedModel
    from polymodal.integrations.mteb import evaluate_mteb, tasks_for

    meta = meta_of(checkpoint)
    tasks = tasks_for(["zeroshot:image"], dataset, "val", meta.zero_shot_templates)
    return evaluate_mteb(LoadedModel.load(checkpoint), "best", "x", tasks, {})


def _checkpoints(run_dir: Path) -> dict[str, int]:
    """Checkpoint directory name -> epoch, for the checkpoints one trial's Ray Train run has
    registered (files still being copied, or copied when the sweep was killed, are not)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return {}
    return {c["checkpoint_dir_name"]: c["metrics"]["epoch"] for c in snapshot["checkpoint_results"]}


def test_interrupted_sweep_resumes(ray_cluster, digits_dataset, tmp_path):
    extra = [
        # Digits' epochs end ~0.6 s apart: 4 leave the second trial epochs to resume after
        # the kill below, which lands within ~0.1 s of its first checkpoint.
        "train.epochs=4",
        "train.keep_checkpoints=10",  # keep every checkpoint: the test reads them all
        "tune.scheduler=fifo",
        "tune.max_concurrent_trials=1",
        "tune.num_samples=1",
    ]
    cfg, overrides = _config(digits_dataset, tmp_path, "resumable", extra)
    cfg.tune.space = {"objective.weights.reconstruction": {"grid": [0.5, 0.1]}}
    # The interrupted run: the same sweep from the command line, killed in its second trial.
    space = "tune.space={objective.weights.reconstruction: {grid: [0.5, 0.1]}}"
    address = ray_cluster.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "polymodal.cli", "tune", str(CONFIG), *overrides, space]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(
        [*cmd, "--address", address], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    trials = tmp_path / "resumable" / "trials"
    deadline = time.monotonic() + 400
    second = None
    while time.monotonic() < deadline and proc.poll() is None:
        runs = sorted(trials.glob("*_00001")) if trials.is_dir() else []
        if runs and any(e >= 1 for e in _checkpoints(runs[0]).values()):
            second = runs[0]
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert second is not None, (tmp_path / "first.log").read_text()[-3000:]
    (first,) = trials.glob("*_00000")
    first_before = _checkpoints(first)
    second_before = _checkpoints(second)
    assert max(first_before.values()) == 4  # the first trial had finished

    result = run_sweep(cfg, progress=False)

    assert [r["stop_reason"] for r in result.rows] == ["completed", "completed"]
    assert _checkpoints(first) == first_before  # a finished trial is not run again
    after = _checkpoints(second)
    new = {n: e for n, e in after.items() if n not in second_before}
    # The unfinished trial went on from its last checkpoint: no epoch trained twice. (Its
    # last may be one Ray had not registered when the sweep was killed: written before the
    # kill, it is reported again on resume.)
    assert new and min(new.values()) > max(second_before.values()), (second_before, after)
    assert max(after.values()) == 4
