"""A dataset, a run directory and its checkpoints on a real S3-compatible server (moto on
127.0.0.1): train from S3, write the run to S3, resume it from S3, evaluate from S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polymodal import storage
from polymodal.checkpoint import fetch_checkpoint, read_meta
from polymodal.config import load_config
from polymodal.data.format import DatasetError, read_manifest
from polymodal.data.ingest import ingest
from polymodal.evaluation.run import evaluate_checkpoint
from polymodal.train.run import fit

CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "digits.yaml"
pytestmark = pytest.mark.integration


def test_train_resume_and_eval_on_s3(ray_cluster, s3_endpoint, digits_dataset, monkeypatch, capfd):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="datasets")
    s3.create_bucket(Bucket="runs")
    dataset = "s3://datasets/digits"
    ingest("builtin:digits", dataset, rows_per_shard=500, progress=False)
    report = ingest("builtin:digits", dataset, rows_per_shard=500, overwrite=True, progress=False)
    # the overwrite left one set of shards, all of them in the new manifest
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="datasets")["Contents"]]
    parts = {k.split("/")[1] for k in keys if k.endswith(".parquet")}
    assert len(parts) == 1 and report.rows_written == 1797
    assert sum(i["rows"] for i in read_manifest(dataset).splits.values()) == 1797
    # The driver finds the S3 endpoint in the config's storage section only (the Ray workers,
    # started earlier, keep theirs); its keys must not end up in anything written.
    secret = "s3cr3t-do-not-log"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", os.environ["AWS_SECRET_ACCESS_KEY"])  # restored
    overrides = [
        f"data.path={dataset}",
        "train.storage_path=s3://runs/team",
        "train.name=digits-s3",
        "train.num_workers=2",
        "train.cpus_per_worker=0.5",
        f"storage.endpoint_url={s3_endpoint}",
        f"storage.secret_access_key={secret}",
    ]
    # The first epoch in the driver (Train's local mode: polymodal uploads its checkpoints)...
    first = fit(load_config(CONFIG, [*overrides, "train.epochs=1", "train.num_workers=0"]))
    assert first.checkpoint.startswith("s3://runs/team/digits-s3/checkpoint_")
    assert first.run_dir == "s3://runs/team/digits-s3"
    metrics = json.loads(storage.read_bytes(f"{first.run_dir}/metrics.json"))
    assert metrics["epoch"] == 1 and metrics["checkpoint"] == first.checkpoint
    assert storage.read_bytes(f"{first.run_dir}/loss_curves.png")[:4] == b"\x89PNG"

    # ... and the same name with more epochs resumes from its checkpoint on S3, on 2 workers.
    second = fit(load_config(CONFIG, [*overrides, "train.epochs=2"]))
    assert second.epochs_run == 1
    meta = read_meta(fetch_checkpoint(second.checkpoint))
    assert meta.epoch == 2
    assert [h["epoch"] for h in meta.history if "val/loss" in h] == [0, 1, 2]

    evaluated = evaluate_checkpoint(second.checkpoint)  # dataset: the one on S3 it trained on
    recorded = meta.metrics["val/zero_shot_accuracy"]
    assert evaluated["val/zero_shot_accuracy"] == pytest.approx(recorded, abs=1e-6)

    assert meta.run_config().storage.endpoint_url == s3_endpoint
    written = s3.list_objects_v2(Bucket="runs", Prefix="team/digits-s3/")["Contents"]
    assert len(written) > 10
    for obj in written:
        body = s3.get_object(Bucket="runs", Key=obj["Key"])["Body"].read()
        assert secret.encode() not in body, obj["Key"]
    out, err = capfd.readouterr()
    assert secret not in out + err


def test_killed_ingest_to_s3_leaves_no_dataset(s3_endpoint, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="half-written")
    out = "s3://half-written/fashion"
    cmd = [sys.executable, "-m", "polymodal.cli", "data", "ingest", "builtin:fashion-mnist", out]
    proc = subprocess.Popen([*cmd, "--rows-per-shard", "500", "--limit", "30000"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        listing = s3.list_objects_v2(Bucket="half-written").get("Contents", [])
        if sum(o["Key"].endswith(".parquet") for o in listing) >= 3:
            break
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="half-written").get("Contents", [])]
    assert any(k.endswith(".parquet") for k in keys), "killed before any shard was written"
    assert not any(k.endswith("manifest.json") for k in keys)
    with pytest.raises(DatasetError, match="did not finish"):
        read_manifest(out)


def test_folder_index_on_s3_ingests(s3_endpoint, tmp_path):
    import boto3

    from polymodal.data.sources.builtin import fashion_mnist

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="folders")
    lines = ["image,text,label"]
    for i, row in enumerate(list(fashion_mnist(limit=12).rows)[:12]):
        s3.put_object(Bucket="folders", Key=f"shop/img/{i}.png", Body=row.values["image"])
        lines.append(f"img/{i}.png,{row.values['text']},{row.label}")
    lines.append("img/gone.png,a lost picture,3")
    s3.put_object(Bucket="folders", Key="shop/index.csv", Body="\n".join(lines).encode())
    report = ingest("s3://folders/shop", tmp_path / "shop", progress=False)
    assert report.rows_written == 12
    assert report.rejected == {"missing file": 1}
    assert any("row 14" in e and "gone.png" in e for e in report.examples)
    assert sum(i["rows"] for i in read_manifest(tmp_path / "shop").splits.values()) == 12
