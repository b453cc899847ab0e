"""A checkpoint written before RunMeta and the registries (tests/fixtures/checkpoint-v1: a digits
image + text model with reconstruction, classification and a Matryoshka size, stopped
mid-epoch) still loads, embeds and classifies exactly as the code that wrote it did
(checkpoint-v1-expected.json), serves its card, and resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

from polymodal.checkpoint import load_model, read_meta
from polymodal.inference.model import LoadedModel, model_card
from polymodal.run_meta import RunMeta
from polymodal.train.optim import build_optimizer, build_scheduler
from polymodal.train.resume import resume
from polymodal.train.same_run import differences, identity

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OLD = FIXTURES / "checkpoint-v1"


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((FIXTURES / "checkpoint-v1-expected.json").read_text())


def test_its_meta_reads_as_a_run_meta():
    meta = read_meta(OLD)
    assert (meta.epoch, meta.step, meta.num_classes) == (1, 8, 10)
    assert meta.position is not None and meta.position.next == [123, 456]
    assert meta.label_names[3] == "three" and meta.prep.image_size == 8
    assert sorted(meta.files) == ["model.pt", "train_state.pt"]
    cfg = meta.run_config()
    assert cfg.objective.weights.classification == 0.5 and cfg.model.section("text").width == 8


def test_it_embeds_and_classifies_as_it_did(expected):
    loaded = LoadedModel.load(str(OLD))
    text = loaded.embed("text", [expected["text"]])[0]
    image = loaded.embed("image", [bytes.fromhex(expected["image_png_hex"])])[0]
    np.testing.assert_allclose(text, expected["text_embedding"], atol=1e-6)
    np.testing.assert_allclose(image, expected["image_embedding"], atol=1e-6)
    probabilities = loaded.classify({"text": expected["text"]})
    assert probabilities == pytest.approx(expected["probabilities"], abs=1e-6)
    card = model_card(str(OLD))
    assert card["dimensions"] == [4, 8] and sorted(card["calibration"]) == [4, 8]


def test_it_resumes_mid_epoch_with_its_optimizer(tmp_path):
    run = tmp_path / "old-run"
    shutil.copytree(OLD, run / "checkpoint_2026-12-01_10-00-00.000000")
    found = resume(None, pafs.LocalFileSystem(), str(run))
    assert found is not None and found.start_epoch == 2 and found.position.steps == 3
    model, meta = load_model(OLD)
    cfg = meta.run_config()
    optimizer = build_optimizer(model, cfg.optim)
    optimizer.load_state_dict(found.train_state["optimizer"])
    build_scheduler(optimizer, cfg.optim, 100).load_state_dict(found.train_state["scheduler"])
    assert any(torch.is_tensor(s.get("exp_avg")) for s in optimizer.state.values())
    # The resume check reads it through today's registries without inventing differences.
    today = RunMeta(
        config=cfg.to_dict(),
        preprocessing=meta.preprocessing,
        dataset=meta.dataset,
        label_names=meta.label_names,
    )
    assert differences(identity(meta), identity(today)) == {}
