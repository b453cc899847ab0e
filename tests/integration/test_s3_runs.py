"""A dataset, a run directory and its checkpoints on a real S3-compatible server (moto on
127.0.0.1): train from S3, write the run to S3, resume it from S3, evaluate from S3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polymodal import storage
from polymodal.config import load_config
from polymodal.evaluation.run import evaluate_checkpoint
from polymodal.train.checkpoint import fetch_checkpoint, read_meta
from polymodal.train.run import fit

CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "digits.yaml"
pytestmark = pytest.mark.integration


def test_train_resume_and_eval_on_s3(ray_cluster, s3_endpoint, digits_dataset):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="datasets")
    s3.create_bucket(Bucket="runs")
    dataset = "s3://datasets/digits"
    storage.replace_dir(digits_dataset, dataset)
    overrides = [
        f"data.path={dataset}",
        "train.storage_path=s3://runs/team",
        "train.name=digits-s3",
        "train.num_workers=2",
        "train.cpus_per_worker=0.5",
    ]
    first = fit(load_config(CONFIG, [*overrides, "train.epochs=1"]))
    assert first.checkpoint.startswith("s3://runs/team/digits-s3/checkpoint_")
    assert first.run_dir == "s3://runs/team/digits-s3"
    metrics = json.loads(storage.read_bytes(f"{first.run_dir}/metrics.json"))
    assert metrics["epoch"] == 1 and metrics["checkpoint"] == first.checkpoint
    assert storage.read_bytes(f"{first.run_dir}/loss_curves.png")[:4] == b"\x89PNG"

    # The same name with more epochs resumes from the checkpoint on S3.
    second = fit(load_config(CONFIG, [*overrides, "train.epochs=2"]))
    assert second.epochs_run == 1
    meta = read_meta(fetch_checkpoint(second.checkpoint))
    assert meta["epoch"] == 2
    assert [h["epoch"] for h in meta["history"] if "val/loss" in h] == [0, 1, 2]

    evaluated = evaluate_checkpoint(second.checkpoint)  # dataset: the one on S3 it trained on
    recorded = meta["metrics"]["val/zero_shot_accuracy"]
    assert evaluated["val/zero_shot_accuracy"] == pytest.approx(recorded, abs=1e-6)
