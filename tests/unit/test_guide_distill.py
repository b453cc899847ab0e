"""Guided filtering and distillation: the masks and the KL by hand, reference embeddings looked
up by content hash, and the refusals (a teacher without the student's modalities, a mined
negative that is no longer a value of the data, a missing teacher)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polymodal.batch import Batch, reference_key
from polymodal.checkpoint import RunMeta, save_checkpoint
from polymodal.config import load_config
from polymodal.data.dataset import data_sources
from polymodal.data.decode import content_hash
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model
from polymodal.objectives.distill import DISTILL, pair_kl
from polymodal.objectives.guide import Guide
from polymodal.objectives.negatives import Negatives
from polymodal.objectives.pairwise import info_nce, sigmoid_loss
from polymodal.train.references import (
    ReferenceError,
    References,
    check_negatives,
    check_references,
)


def _ce(logits: list[float], target: int) -> float:
    return -math.log(math.exp(logits[target]) / sum(math.exp(v) for v in logits))


def test_guide_masks_what_it_scores_near_the_positive_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    negatives = torch.tensor([[[0.0, 1.0]], [[0.8, 0.6]]])
    s = torch.tensor(2.0)
    # a→b logits, row 0: [b0 2, b1 1.2, n0 0, n1 1.6]; row 1: [0, 1.6, 2, 1.2] (target 1).
    # Guide: row 0's own pair scores 0.5; it scores b1 at 0.6 (masked at any margin >= 0) and
    # its negative n0 at 0.45 (kept at margin 0, masked at 0.1). Row 1's own pair scores 1.0,
    # above all it sees; b→a masks nothing (row 0 sees a1 at 0, row 1 sees a0 at 0.6).
    ga = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gb = torch.tensor([[0.5, 0.0], [0.6, 1.0]])
    gneg = torch.tensor([[[0.45, 0.0]], [[0.0, 0.2]]])
    ba = (_ce([2, 0], 0) + _ce([1.2, 1.6], 1)) / 2
    for margin, row0 in ((0.0, [2, 0, 1.6]), (0.1, [2, 1.6])):
        ab = (_ce(row0, 0) + _ce([0, 1.6, 2, 1.2], 1)) / 2
        guide = Guide(ga, gb, gneg, None, margin)
        got = info_nce(a, b, s, negatives_b=Negatives(negatives), guide=guide)
        assert float(got) == pytest.approx(0.5 * (ab + ba), rel=1e-6), margin


def test_guide_with_a_margin_nothing_reaches_changes_nothing():
    g = torch.Generator().manual_seed(0)
    a, b = (F.normalize(torch.randn(5, 4, generator=g), dim=-1) for _ in range(2))
    negatives = Negatives(F.normalize(torch.randn(5, 2, 4, generator=g), dim=-1))
    guide = Guide(a, b, negatives.features, None, margin=-10.0)  # never within: keep all
    for loss, kw in ((info_nce, {}), (sigmoid_loss, {"logit_bias": torch.tensor(-1.0)})):
        plain = loss(a, b, torch.tensor(3.0), negatives_b=negatives, **kw)
        guided = loss(a, b, torch.tensor(3.0), negatives_b=negatives, guide=guide, **kw)
        assert torch.equal(plain, guided)
        masked = loss(a, b, torch.tensor(3.0), negatives_b=negatives, **kw, guide=Guide(
            a, b, negatives.features, None, margin=10.0))  # fmt: skip
        assert not torch.isclose(plain, masked)  # everything but the positives masked


def test_distill_kl_by_hand_and_zero_when_the_student_is_the_teacher():
    g = torch.Generator().manual_seed(1)
    sa, sb = (F.normalize(torch.randn(4, 3, generator=g), dim=-1) for _ in range(2))
    ta, tb = (F.normalize(torch.randn(4, 5, generator=g), dim=-1) for _ in range(2))
    valid = torch.tensor([True, True, False, True])
    tau = 0.5

    def kl(rows_s, cols_s, rows_t, cols_t):
        keep = valid.nonzero().flatten()
        p = F.softmax(rows_t[keep] @ cols_t[keep].t() / tau, 1)
        q = F.log_softmax(rows_s[keep] @ cols_s[keep].t() / tau, 1)
        return (p * (p.log() - q)).sum(1).mean()

    expected = 0.5 * (kl(sa, sb, ta, tb) + kl(sb, sa, tb, ta))
    got = pair_kl(sa, sb, ta, tb, valid, tau)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert float(got) > 0
    same = pair_kl(ta, tb, ta, tb, valid, tau)
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def _checkpoint(path, modalities=("image", "text")):
    prep = Preprocessing(list(modalities), image_size=8, image_channels=1)
    cfg = load_config(None, ["model.embed_dim=8", "model.image.width=8", "model.text.width=16"])
    model = build_model(cfg, prep, num_classes=0)
    meta = RunMeta(config=cfg.to_dict(), preprocessing=prep.to_dict(), epoch=1, step=1)
    save_checkpoint(path, model, meta)
    return str(path)


def test_references_refuse_a_teacher_without_the_students_modalities(tmp_path):
    teacher = _checkpoint(tmp_path / "teacher")
    cfg = load_config(
        None,
        [
            "model.modalities=[audio,text]",
            "objective.weights.distill=1",
            f"objective.distill.teacher={teacher}",
        ],  # fmt: skip
    )
    assert DISTILL.active(cfg)
    with pytest.raises(ValueError, match=r"objective.distill.teacher .*has no \['audio'\] encoder"):
        check_references(cfg, [])
    missing = f"objective.distill.teacher={tmp_path}/none"
    cfg = load_config(None, ["objective.weights.distill=1", missing])
    with pytest.raises(ValueError, match="objective.distill.teacher"):
        check_references(cfg, [])
    with pytest.raises(ValueError, match="'objective.distill.teacher': .* needs one"):
        load_config(None, ["objective.weights.distill=1"])  # no teacher at all


def test_references_attach_by_content_hash_and_refuse_unknown_values():
    values = ["one", "two", "three"]
    hashes = np.array(sorted(content_hash(v) for v in values), dtype=np.int64)
    emb = np.arange(6, dtype=np.float32).reshape(3, 2)
    refs = References({"teacher": {"text": (hashes, emb)}})
    batch = Batch(
        inputs={"text": torch.zeros(2, 4), "image": torch.zeros(2, 1)},
        present={"text": torch.tensor([1.0, 0.0]), "image": torch.ones(2)},
        hashes={"text": torch.tensor([int(hashes[2]), 0]), "image": torch.zeros(2).long()},
        label=torch.tensor([-1, -1]),
    )
    out = refs(batch)
    key = reference_key("teacher", "text")
    assert out.reference[key].tolist() == [[4.0, 5.0], [0.0, 0.0]]
    assert out.reference_present[key].tolist() == [True, False]
    assert reference_key("teacher", "image") not in out.reference  # the teacher has no image
    batch.hashes["text"][0] = 12345  # a value the data never had
    with pytest.raises(ReferenceError, match="text value"):
        refs(batch)


def test_check_negatives_names_the_row_whose_negative_is_gone(tmp_path):
    from tests.unit.test_mined_format import _mined_dataset

    path = _mined_dataset(tmp_path)  # text->image negatives, by value
    cfg = load_config(None, [f"data.path={path}"])
    sources = data_sources(cfg)
    known = np.array([], dtype=np.int64)
    with pytest.raises(ReferenceError, match=r"row '.*': a mined negative of text->image"):
        check_negatives("objective.contrastive.guide", sources, {"image": (known, known)})


def test_gradient_cache_with_mined_negatives_is_refused_before_ray(tmp_path):
    from polymodal.train.prepare import check_run
    from tests.unit.test_mined_format import _mined_dataset

    path = _mined_dataset(tmp_path)
    overrides = [f"data.path={path}", "train.batch_size=64", "train.grad_cache.chunk_size=8"]
    with pytest.raises(ValueError, match=r"train.grad_cache.chunk_size=8: .*\['text->image'\]"):
        check_run(load_config(None, overrides))


def test_evaluation_without_a_teacher_reports_no_distill_loss():
    """`polymodal eval` of a distilled checkpoint: no reference embeddings, so the distill
    term is left out of val/loss instead of failing or reading as 0; the guide likewise."""
    from polymodal.evaluation.evaluate import evaluate

    prep = Preprocessing(["image", "text"], image_size=8, image_channels=1, text_max_len=10)
    overrides = ["model.embed_dim=8", "model.image.width=8", "model.text.width=16"]
    overrides += ["objective.weights.distill=1", "objective.distill.teacher=somewhere"]
    overrides += ["objective.contrastive.guide=somewhere"]
    cfg = load_config(None, overrides)
    model = build_model(cfg, prep, num_classes=0)
    g = torch.Generator().manual_seed(0)
    batch = Batch(
        inputs={
            "image": torch.rand(6, 1, 8, 8, generator=g),
            "text": torch.randint(1, 99, (6, 10)),
        },
        present={"image": torch.ones(6), "text": torch.ones(6)},
        hashes={"image": torch.arange(6), "text": torch.arange(6)},
        label=torch.full((6,), -1),
    )
    metrics = evaluate(model, [batch], prep, cfg)
    assert "val/loss/contrastive" in metrics and "val/loss/distill" not in metrics
    assert metrics["val/loss"] == pytest.approx(metrics["val/loss/contrastive"])


def test_a_run_directory_stands_for_its_newest_checkpoint(tmp_path):
    from polymodal.checkpoint import checkpoint_or_newest

    run = tmp_path / "run"
    older = _checkpoint(run / "checkpoint_2026-12-01_10-00-00.000000")
    newer = _checkpoint(run / "checkpoint_2026-12-02_10-00-00.000000")
    (run / "checkpoint_2026-12-03_10-00-00.000000").mkdir()  # being written: no meta yet
    assert checkpoint_or_newest(str(run)) == newer
    assert checkpoint_or_newest(older) == older
    cfg = load_config(None, ["objective.weights.distill=1", f"objective.distill.teacher={run}"])
    from polymodal.train.references import reference_checkpoints

    assert reference_checkpoints(cfg)["teacher"][1] == newer
