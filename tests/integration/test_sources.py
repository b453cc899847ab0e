"""Two datasets in one run on a real local Ray cluster: digit images with captions, and the
captions with the spoken digit (audio never beside an image). Each epoch reads the sources as
weighted, and the model ranks audio for images it never saw paired (held-out tri-modal rows)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from polymodal.config import load_config
from polymodal.data.format import read_manifest, shard_paths
from polymodal.data.pipeline import sample_key
from polymodal.evaluation.report import write_report
from polymodal.evaluation.run import evaluate_checkpoint
from polymodal.train.run import fit

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "jobs" / "configs" / "digits-bind.yaml"

pytestmark = pytest.mark.integration


def _train_ids(path: Path) -> set[int]:
    manifest = read_manifest(path)
    files = shard_paths(str(path), manifest, "train")
    return {
        sample_key(i) for f in files for i in pq.read_table(f, columns=["id"])["id"].to_pylist()
    }


def test_two_sources_train_as_weighted_and_bind_audio_to_images(
    ray_cluster, digits_dataset, spoken_digits_dataset, trimodal_digits_dataset, tmp_path
):
    spoken, trimodal = spoken_digits_dataset, trimodal_digits_dataset
    sources = (
        f"[{{path: {digits_dataset}, name: images}}, {{path: {spoken}, weight: 0.5}}, "
        f"{{path: {trimodal}, name: heldout, weight: 0}}]"  # validation only
    )
    cfg = load_config(
        CONFIG,
        [
            f"data.sources={sources}",
            f"train.storage_path={tmp_path / 'runs'}",
            f"train.sample_log_dir={tmp_path / 'samples'}",
            "train.epochs=3",
            "train.num_workers=0",  # in the driver: what is read is the point
        ],
    )
    result = fit(cfg)

    images, speech = _train_ids(digits_dataset), _train_ids(spoken)
    assert not images & speech  # the sources' rows are told apart by id
    for epoch in (1, 2, 3):
        trained = Counter(
            int(key)
            for f in (tmp_path / "samples").glob(f"epoch-{epoch}-rank-*.txt")
            for key in f.read_text().split()
        )
        assert max(trained.values()) == 1  # each row once an epoch
        # Weight 1: every image row (but the last partial batch of each rank, dropped).
        assert len(images & trained.keys()) > 0.9 * len(images)
        # Weight 0.5: one of the spoken digits' two row groups (1,024 rows and the rest).
        assert 0.3 * len(speech) < len(speech & trained.keys()) < 0.7 * len(speech)
        assert trained.keys() <= images | speech  # nothing of the validation-only source

    metrics = json.loads((Path(result.run_dir) / "metrics.json").read_text())
    assert metrics["val/recall@5/text->audio"] > 0.5  # the pairs it was shown
    assert metrics["train/paired/audio-image"] == 0  # no training row pairs them
    assert metrics["train/paired/image-text"] > 0.5 and metrics["train/paired/audio-text"] > 0.2
    # Each source's own recalls: its pairs only (the second is named after its path).
    assert 0 <= metrics["val/images/recall@5/image->text"] <= 1
    assert metrics["val/digits-spoken/recall@5/text->audio"] > 0.5
    assert not [
        k
        for k in metrics
        if k.startswith(("val/images/", "val/digits-spoken/")) and "audio" in k and "image" in k
    ]
    assert "val/images/recall@1/text->audio" not in metrics
    # The validation-only rows hold all three: image -> audio was never trained, yet the
    # right digit's recording (one per class) ranks first far above chance (0.1).
    assert metrics["val/heldout/class_recall@1/image->audio"] > 0.3, metrics
    held_out = evaluate_checkpoint(result.checkpoint, str(trimodal))
    assert held_out["val/class_recall@1/image->audio"] == pytest.approx(
        metrics["val/heldout/class_recall@1/image->audio"]
    )
    # The run report shows the direction, marked as emergent, with every source's val rows.
    page = Path(write_report(result.run_dir)).read_text()
    assert "image → audio <b>(emergent: never paired in training)</b>" in page
    assert "text → image <b>" not in page
    assert "sources images (" in page
