"""`polymodal mine` on digits: text->image negatives with a small checkpoint, each train row's
K by value (never its own image, never its label with --exclude-same-label), refusals."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from polymodal.checkpoint import RunMeta, read_meta, save_checkpoint
from polymodal.config import load_config
from polymodal.data.format import negatives_column, read_manifest, row_groups, shard_paths
from polymodal.data.pipeline import split_dataset
from polymodal.data.sources.builtin import DIGIT_LABELS
from polymodal.inference.mine import MineSettings, mine
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model
from polymodal.train.run import fit

pytestmark = pytest.mark.integration
KEY = "text->image"
CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "digits.yaml"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits_dataset):
    """An untrained digits model: mining needs embeddings, not good ones (seconds, no Ray)."""
    manifest = read_manifest(digits_dataset)
    channels = manifest.extra.get("image_channels", 1)
    prep = Preprocessing(["image", "text"], image_size=8, image_channels=channels)
    overrides = ["model.embed_dim=8", "model.image.width=8", "model.text.width=16"]
    cfg = load_config(None, overrides + ["model.text.layers=1", "model.text.heads=2"])
    torch.manual_seed(0)
    model = build_model(cfg, prep, num_classes=len(DIGIT_LABELS)).eval()
    path = tmp_path_factory.mktemp("mine") / "ckpt"
    meta = RunMeta(
        config=cfg.to_dict(),
        preprocessing=prep.to_dict(),
        label_names=DIGIT_LABELS,
        num_classes=len(DIGIT_LABELS),
        epoch=1,
        step=1,
    )
    save_checkpoint(path, model, meta)
    return path


def _rows(path, split):
    manifest = read_manifest(path)
    return [r for uri in shard_paths(path, manifest, split) for r in pq.read_table(uri).to_pylist()]


@pytest.fixture(scope="module")
def mined_digits(ray_cluster, digits_dataset, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("mined") / "digits"
    settings = MineSettings("text", "image", 3, range_min=2, range_max=60, exclude_same_label=True)
    return out, mine(str(checkpoint), str(digits_dataset), str(out), settings)


def test_mine_text_image_excluding_labels(mined_digits, digits_dataset):
    out, report = mined_digits
    manifest = read_manifest(out)
    assert manifest.extra["negatives"][KEY]["num_negatives"] == 3
    row_groups(out, manifest, "train")  # every shard has the manifest's schema
    source = read_manifest(digits_dataset)
    assert manifest.splits["train"]["rows"] == source.rows("train")
    assert manifest.splits["val"]["rows"] == source.rows("val")
    train = _rows(out, "train")
    labels_of: dict[bytes, set[int]] = {}
    for r in train:
        labels_of.setdefault(r["image"], set()).add(r["label"])
    column = negatives_column(KEY)
    for r in train:
        negatives = r[column]
        assert len(negatives) == 3
        assert r["image"] not in negatives  # never the row's own image (nor the same content)
        for n in negatives:
            assert r["label"] not in labels_of[n]
    assert all(r[column] is None for r in _rows(out, "val"))
    assert report.mined == report.rows == len(train)
    assert report.negatives == 3 * len(train)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "polymodal.cli", "mine", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_mine_refusals(digits_dataset, checkpoint, tmp_path):
    common = [str(checkpoint), str(digits_dataset)]
    proc = _cli(*common, str(tmp_path / "a"), "--anchor", "text", "--candidates", "image",
                "--num-negatives", "0")  # fmt: skip
    assert proc.returncode == 2 and "--num-negatives 0" in proc.stderr, proc.stderr
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("x")
    proc = _cli(*common, str(tmp_path / "c"), "--anchor", "text", "--candidates", "image")
    assert proc.returncode == 2 and "OUT" in proc.stderr, proc.stderr


def test_training_on_mined_digits_reads_the_negatives(mined_digits, checkpoint, tmp_path, capfd):
    """Negatives from disk to the loss, guided and distilled (the checkpoint as guide and
    teacher, with its own 8 px preprocessing): one epoch in the driver, finite losses."""
    out, _ = mined_digits
    overrides = [f"data.path={out}", f"train.storage_path={tmp_path}", "train.name=mined"]
    overrides += ["train.epochs=1", "train.num_workers=0"]
    overrides += [
        f"objective.contrastive.guide={checkpoint}",
        "objective.contrastive.guide_margin=0.1",
    ]
    overrides += ["objective.weights.distill=0.5", f"objective.distill.teacher={checkpoint}"]
    result = fit(load_config(CONFIG, overrides))
    metrics = json.loads((Path(result.run_dir) / "metrics.json").read_text())
    losses = {k: v for k, v in metrics.items() if "loss" in k and isinstance(v, float)}
    assert losses and all(math.isfinite(v) for v in losses.values()), metrics
    for key in ("train/loss/distill", "val/loss/distill", "val/loss/distill/image-text"):
        assert losses[key] > 0, key  # an untrained teacher and student disagree
    # The run's report shows what was mined: a picture of the image negatives.
    from polymodal.evaluation.report import write_report

    page = Path(write_report(result.run_dir))
    assert "mined-text-image.png" in page.read_text()
    assert (page.parent / "mined-text-image.png").stat().st_size > 0
    printed = capfd.readouterr().out
    rows = read_manifest(out).rows("train") + read_manifest(out).rows("val")
    # guide and teacher are one checkpoint: embedded once, for both
    embedded = [ln for ln in printed.splitlines() if f": embedding {rows:,} rows" in ln]
    reused = [ln for ln in printed.splitlines() if f": the embeddings of {checkpoint} " in ln]
    assert len(embedded) == len(reused) == 1, printed
    settings = {ln.split(":")[0] for ln in embedded + reused}
    assert settings == {"objective.contrastive.guide", "objective.distill.teacher"}
    # What the run's workers read: each train row's 3 negatives, decoded with its preprocessing
    prep = read_meta(result.checkpoint).prep
    batch = split_dataset(str(out), "train", prep).take_batch(8)
    assert batch[f"negatives/{KEY}"].shape[:2] == (8, 3)
    assert (batch[f"negatives_present/{KEY}"] == 1).all()
