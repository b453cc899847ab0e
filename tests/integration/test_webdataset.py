"""Webdataset tars of real Fashion-MNIST images: ingested in parallel (one Ray Data task per
tar) from and to a real S3-compatible server, and trained on directly, without ingest, with
augmentation on and bad samples dropped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polymodal.checkpoint import read_meta
from polymodal.config import load_config
from polymodal.data.format import read_manifest
from polymodal.data.ingest import ingest
from polymodal.data.sources.builtin import FASHION_LABELS, fashion_mnist
from polymodal.data.validate import validate_dataset
from polymodal.train.run import fit
from tests.conftest import write_tars

CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "digits.yaml"
DAMAGE = {5: {"png": b"junk"}, 60: {"cls": b"shoe"}, 130: {"txt": b" "}}
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tars(tmp_path_factory) -> tuple[Path, Path]:
    """4 train tars of 100 samples (3 of them damaged) and 1 val tar of 100."""
    out = tmp_path_factory.mktemp("wds")
    source = list(fashion_mnist(limit=400).rows)
    write_tars(out / "train", source[:400], per_tar=100, damaged=DAMAGE)
    write_tars(out / "val", source[400:500], per_tar=100)
    return out / "train", out / "val"


def test_tars_on_s3_ingest_in_parallel(ray_cluster, s3_endpoint, tars):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="wds")
    for tar in sorted(tars[0].glob("*.tar")):
        s3.upload_file(str(tar), "wds", f"shards/{tar.name}")
    report = ingest(
        "s3://wds/shards/{00000..00003}.tar", "s3://wds/fashion", rows_per_shard=40, progress=False
    )
    assert report.parallel_tasks == 4
    assert report.rows_written == 398  # the empty text is a missing text at ingest, not bad
    assert report.rejected == {"unreadable image": 1, "bad label": 1}
    assert report.bytes_written > 398 * 200
    manifest = read_manifest("s3://wds/fashion")
    assert manifest.rows("train") + manifest.rows("val") == 398
    assert manifest.label_names == [str(i) for i in range(10)]
    paths = [s["path"] for info in manifest.splits.values() for s in info["shards"]]
    assert len(paths) == len(set(paths)) >= 4 * 2  # each task wrote its own shards
    assert validate_dataset("s3://wds/fashion").ok


def test_train_directly_from_tars(ray_cluster, tars, tmp_path):
    cfg = load_config(
        CONFIG,
        [
            f"data.path={tars[0]}/{{00000..00003}}.tar",
            f"data.val_path={tars[1]}/00000.tar",
            "data.max_bad_fraction=0.02",
            "data.augment.crop_scale=[0.7,1.0]",
            "data.augment.hflip=0.5",
            f"train.storage_path={tmp_path}",
            "train.name=wds",
            "train.epochs=1",
            "train.num_workers=0",
        ],
    )
    cfg.data.label_names = list(FASHION_LABELS)
    result = fit(cfg)
    meta = read_meta(result.checkpoint)
    assert meta.step == 397 // 64  # 400 samples, 3 dropped
    assert meta.label_names == list(FASHION_LABELS)
    metrics = json.loads((Path(result.run_dir) / "metrics.json").read_text())
    for reason in ("unreadable image", "wrong type", "empty text"):
        assert metrics[f"train/bad_rows/{reason}"] == 1, reason
    assert 0 <= metrics["val/accuracy"] <= 1
