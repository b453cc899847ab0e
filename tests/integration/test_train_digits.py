"""Real digits (with a few bad rows of every kind) → 2-worker Ray Train run, sharded (FSDP)
with recomputed text activations → checkpoint → eval by a plain model; then resume the same
run, sharded again. (DDP runs are the other integration tests'.)"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polymodal.checkpoint import load_train_state, read_meta
from polymodal.config import load_config
from polymodal.data.clip_benchmark import export_dataset
from polymodal.evaluation.report import screenshot, write_report
from polymodal.evaluation.run import evaluate_checkpoint
from polymodal.train.run import fit
from tests.integration.conftest import BAD_ROWS

CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "digits.yaml"
MTEB_TASKS = ["zeroshot:image", "probe:image", "retrieval:text->image"]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def first_run(ray_cluster, damaged_digits, tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    # Suites during training: mteb tasks (the last epoch), CLIP_benchmark's layout of the val
    # rows and a val metric (every epoch).
    layout = tmp_path_factory.mktemp("cb") / "digits"
    export_dataset(str(damaged_digits[0]), str(layout))
    suites = (
        f"eval.suites=[{{name: mteb, kind: mteb, tasks: [{','.join(MTEB_TASKS)}], "
        f"every_epochs: 2}}, {{name: cb, kind: clip_benchmark, path: '{layout}'}}, "
        "{name: val, kind: val, tasks: [val/recall@5/image->text]}]"
    )
    overrides = [
        suites,
        f"data.path={damaged_digits[0]}",
        f"train.storage_path={storage}",
        "train.name=digits-it",
        "train.epochs=2",
        "train.num_workers=2",
        "train.cpus_per_worker=0.5",
        "train.strategy=fsdp",
        "train.grad_cache.chunk_size=16",  # over FSDP's shards, in chunks of a worker's 32 rows
        "model.text.activation_checkpointing=true",
    ]
    cfg = load_config(CONFIG, overrides)
    result = fit(cfg)
    # As `polymodal train` does once the run is finished, from a working directory that is
    # gone (a submitted job's, replaced under it by another node's runtime-env agent).
    here, gone = os.getcwd(), tmp_path_factory.mktemp("cwd")
    os.chdir(gone)
    gone.rmdir()
    try:
        write_report(result.run_dir)
    finally:
        os.chdir(here)
    return result, overrides


def test_train_writes_checkpoint_metrics_and_plot(first_run, tmp_path):
    result, _ = first_run
    ckpt = Path(result.checkpoint)
    assert (ckpt / "model.pt").is_file() and (ckpt / "polymodal.json").is_file()
    meta = read_meta(ckpt)
    assert meta.epoch == 2 and meta.label_names[0] == "zero"
    # int8 ranges of the val embeddings, per servable size: [2, dim] of (min, max)
    embed_dim = meta.run_config().model.embed_dim
    lo, hi = np.asarray(meta.calibration[str(embed_dim)])
    assert lo.shape == (embed_dim,) and (lo < hi).all() and (-1 <= lo).all() and (hi <= 1).all()
    # FSDP's optimizer state is keyed by parameter name, the model's is the plain model's
    assert "encoders.text.embed.weight" in load_train_state(ckpt)["optimizer"]["state"]
    steps_per_epoch = meta.step // 2
    # Each rank's part holds 806 rows; the damaged rows dropped from one part end the epoch
    # for both ranks a batch early at most (drop_last).
    assert 1612 // 2 // 32 - 1 <= steps_per_epoch <= 1612 // 2 // 32

    run_dir = Path(result.run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "loss_curves.png").stat().st_size > 10_000
    for name in (
        "val/recall@1/image->text",
        "val/recall@10/text->image",
        "val/accuracy",
        "val/zero_shot_accuracy",
        "val/loss",
        "val/loss/contrastive",
        "val/loss/reconstruction",
        "val/loss/classification",
    ):
        assert name in metrics, name
    assert metrics["val/accuracy"] > 0.5  # chance is 0.1
    # the run's HTML report, with every figure it shows written beside it
    page = (run_dir / "report" / "index.html").read_text()
    for figure in ("loss_curves.png", "projection.png", "gallery.png"):
        assert f"src='{figure}'" in page
        assert (run_dir / "report" / figure).read_bytes()[:4] == b"\x89PNG"
    assert "image → text" in page and f"{metrics['val/accuracy']:.4f}" in page
    # Headless Chromium renders it with its figures: the plots' coloured lines show up
    # (the page without images is black text on white).
    shot = screenshot(str(run_dir / "report" / "index.html"), str(tmp_path / "shot.png"), 900, 1200)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (1200, 900, 3)
    coloured = np.abs(pixels[..., 0] - pixels[..., 2]) > 80
    assert coloured.sum() > 500
    assert metrics["val/zero_shot_accuracy"] > 0.3
    assert 0.0 <= meta.metrics["train/data_wait_fraction"] <= 1.0
    assert meta.metrics["train/samples_per_s"] > 0
    baseline, first_log = meta.history[0], meta.history[1]
    assert baseline["step"] == 0 and "val/loss/reconstruction" in baseline  # untrained model
    assert baseline["val/loss"] > metrics["val/loss"]
    assert {"train/loss", "train/loss/contrastive"} <= set(first_log)


def test_bad_rows_are_dropped_counted_and_sampled(first_run, damaged_digits):
    result, _ = first_run
    ids = damaged_digits[1]
    metrics = json.loads((Path(result.run_dir) / "metrics.json").read_text())
    assert metrics["train/bad_rows"] == BAD_ROWS * len(ids)  # in the last epoch
    for reason in ids:
        assert metrics[f"train/bad_rows/{reason}"] == BAD_ROWS, reason
    assert 0 < metrics["train/bad_fraction"] < 0.01
    report = json.loads((Path(result.run_dir) / "bad_rows.json").read_text())
    assert report["bad"]["train"] == {reason: 2 * BAD_ROWS for reason in ids}  # two epochs
    assert report["rows_read"] == 2 * 1612 + 185  # train twice, val once (then cached)
    sampled = {(s["id"], s["reason"]) for s in report["samples"]}
    assert sampled == {(i, reason) for reason, some in ids.items() for i in some}


def test_offline_eval_matches_training_eval(first_run, digits_dataset):
    result, _ = first_run
    offline = evaluate_checkpoint(result.checkpoint, str(digits_dataset))
    for name in ("val/accuracy", "val/zero_shot_accuracy", "val/recall@5/image->text"):
        assert offline[name] == pytest.approx(result.metrics[name], abs=1e-6), name


def test_eval_command_prints_the_same_metrics(first_run, digits_dataset):
    import subprocess
    import sys

    result, _ = first_run
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "polymodal.cli",
            "eval",
            result.checkpoint,
            str(digits_dataset),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    metrics = json.loads(proc.stdout)
    assert metrics["val/accuracy"] == pytest.approx(result.metrics["val/accuracy"], abs=1e-6)


def test_suites_score_as_their_harnesses_score_the_checkpoint(first_run, tmp_path, capsys):
    from polymodal.cli import main

    result, overrides = first_run
    run_dir = Path(result.run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # val: the val metric itself
    assert metrics["suite/val/main_score"] == metrics["val/recall@5/image->text"]
    # clip_benchmark: zero-shot acc1 on the layout of the val rows = polymodal's zero-shot
    assert metrics["suite/cb/wds/digits"] == pytest.approx(metrics["val/zero_shot_accuracy"])
    assert metrics["suite/cb/main_score"] == metrics["suite/cb/wds/digits"]
    # mteb: every task's main score, their mean, and `polymodal eval --mteb`'s same numbers
    argv = ["eval", result.checkpoint, "--mteb", ",".join(MTEB_TASKS)]
    assert main([*argv, "--mteb-output", str(tmp_path)]) == 0
    offline = json.loads(capsys.readouterr().out)
    scores = {task: metrics[f"suite/mteb/{task}"] for task in offline}
    assert len(scores) == 3 and all(s > 0 for s in scores.values())
    for task, score in scores.items():
        assert score == pytest.approx(offline[task]["main_score"], abs=1e-6), task
    assert metrics["suite/mteb/main_score"] == pytest.approx(np.mean(list(scores.values())))
    assert scores["digits-probe-image"] > 0.5  # the linear probe; chance is 0.1
    assert metrics["suite/mteb/seconds"] > 0
    # every_epochs: 2: epoch 1's checkpoint has the every-epoch suites only
    epoch1 = read_meta(sorted(run_dir.glob("checkpoint_*"))[0]).metrics
    assert "suite/cb/main_score" in epoch1 and "suite/mteb/main_score" not in epoch1
    assert "suite/mteb/main_score" in (run_dir / "report" / "index.html").read_text()


def test_same_run_name_resumes_from_the_newest_intact_checkpoint(first_run):
    first, overrides = first_run
    first_meta = read_meta(first.checkpoint)
    checkpoints = [p for p in Path(first.run_dir).glob("checkpoint_*") if p.is_dir()]
    latest, previous = sorted(checkpoints, reverse=True)[:2]
    assert read_meta(latest).epoch == 2 and read_meta(previous).epoch == 1
    weights = (latest / "model.pt").read_bytes()
    (latest / "model.pt").write_bytes(weights[: len(weights) // 3])  # a torn upload
    second = fit(load_config(CONFIG, overrides))
    # Ray offered the damaged epoch-2 checkpoint; the run went on from epoch 1's instead
    # (epoch 2 ran again), neither from scratch nor from the damaged one.
    assert second.epochs_run == 1
    meta = read_meta(second.checkpoint)
    assert meta.epoch == 2
    # epoch 2's 806 // 32 steps per rank again, one fewer where damaged rows fell
    assert abs(meta.step - first_meta.step) <= 1
    first_epoch = [row for row in first_meta.history if row["epoch"] <= 1]
    assert meta.history[: len(first_epoch)] == first_epoch
    assert [row["epoch"] for row in meta.history if "val/loss" in row] == [0, 1, 2]


def test_a_checkpoint_ray_never_registered_is_reported_on_resume(first_run):
    """A worker that dies between writing a checkpoint and Ray's next poll leaves one Ray
    does not know: the resumed run goes on from it and reports it, so Ray (and Tune) do."""
    first, overrides = first_run
    run_dir = Path(first.run_dir)
    latest = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())[-1]
    epoch = read_meta(latest).epoch
    unknown = run_dir / "checkpoint_2999-01-01_00-00-00.000000"  # Ray's names sort by time
    shutil.copytree(latest, unknown)
    result = fit(load_config(CONFIG, overrides + [f"train.epochs={epoch}"]))
    assert result.epochs_run == 0
    assert Path(result.checkpoint) == unknown
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    assert unknown.name in {c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]}
