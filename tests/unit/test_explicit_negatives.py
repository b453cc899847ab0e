"""Explicit (mined hard) negatives: the formula by hand, absent ones changing nothing, the
routing by direction, the Batch keys, and a JointModel's gradients through its negatives."""

import math

import pytest
import torch
import torch.nn.functional as F

from polymodal.batch import Batch, direction, negatives_key, negatives_present_key
from polymodal.config import load_config
from polymodal.modalities import Preprocessing
from polymodal.models.build import build_model
from polymodal.objectives.contrastive import CONTRASTIVE
from polymodal.objectives.negatives import Negatives
from polymodal.objectives.pairwise import info_nce, multi_contrastive, sigmoid_loss


def _ce(logits: list[float], target: int) -> float:
    return -math.log(math.exp(logits[target]) / sum(math.exp(v) for v in logits))


def _hand_case():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    negatives = torch.tensor([[[0.0, 1.0]], [[0.8, 0.6]]])  # one image negative per row
    return a, b, negatives, torch.tensor(2.0)


def test_info_nce_with_negatives_matches_hand_computed_value():
    a, b, negatives, s = _hand_case()
    # a→b: each row against [b0, b1, n0, n1] (both rows' negatives: shared), s = 2
    ab = (_ce([2, 1.2, 0, 1.6], 0) + _ce([0, 1.6, 2, 1.2], 1)) / 2
    ba = (_ce([2, 0], 0) + _ce([1.2, 1.6], 1)) / 2  # b→a: no a negatives, as without
    got = info_nce(a, b, s, negatives_b=Negatives(negatives))
    assert float(got) == pytest.approx(0.5 * (ab + ba), rel=1e-6)
    # row 1's negative absent: a column of neither row
    ab = (_ce([2, 1.2, 0], 0) + _ce([0, 1.6, 2], 1)) / 2
    got = info_nce(a, b, s, negatives_b=Negatives(negatives, torch.tensor([[True], [False]])))
    assert float(got) == pytest.approx(0.5 * (ab + ba), rel=1e-6)
    # negatives_a: b rows against [a0, a1, n0, n1]; a→b is then as without
    ab = (_ce([2, 1.2], 0) + _ce([0, 1.6], 1)) / 2
    ba = (_ce([2, 0, 0, 1.6], 0) + _ce([1.2, 1.6, 1.6, 1.92], 1)) / 2
    got = info_nce(a, b, s, negatives_a=Negatives(negatives))
    assert float(got) == pytest.approx(0.5 * (ab + ba), rel=1e-6)


def test_sigmoid_negatives_are_extra_z_minus_one_columns_for_every_row():
    a, b, negatives, s = _hand_case()
    bias = torch.tensor(-1.0)

    def nll(z, dot):
        return -math.log(1 / (1 + math.exp(-z * (2 * dot + bias.item()))))

    plain = [[1.0, 0.6], [0.0, 0.8]]  # a_i · b_j
    extra = [[0.0, 0.8], [1.0, 0.6]]  # a_i · n_j
    expected = sum(nll(1 if i == j else -1, plain[i][j]) for i in (0, 1) for j in (0, 1))
    expected += sum(nll(-1, extra[i][j]) for i in (0, 1) for j in (0, 1))
    got = sigmoid_loss(a, b, s, bias, negatives_b=Negatives(negatives), chunk_size=1)
    assert float(got) == pytest.approx(expected / 2, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_absent_negatives_give_exactly_the_loss_without(dtype):
    torch.manual_seed(0)
    a, b = (F.normalize(torch.randn(6, 4, dtype=dtype), dim=-1) for _ in range(2))
    negs = F.normalize(torch.randn(6, 3, 4, dtype=dtype), dim=-1).requires_grad_()
    s, bias = torch.tensor(5.0, dtype=dtype), torch.tensor(-2.0, dtype=dtype)
    absent = Negatives(negs, torch.zeros(6, 3, dtype=torch.bool))
    kw = {
        "valid": torch.tensor([1, 1, 0, 1, 1, 1]).bool(),
        "keys": torch.tensor([0, 1, 0, 2, 3, 1]),
    }
    for loss in (
        lambda **more: info_nce(a, b, s, **kw, **more),
        lambda **more: sigmoid_loss(a, b, s, bias, chunk_size=4, **kw, **more),
    ):
        for side in ("negatives_b", "negatives_a"):
            with_absent = loss(**{side: absent})
            assert torch.equal(with_absent, loss())
            (grad,) = torch.autograd.grad(with_absent, negs)
            assert not grad.any()
            assert float(loss(**{side: Negatives(negs)}).detach()) > float(loss())


def test_multi_contrastive_passes_each_direction_to_its_pair():
    torch.manual_seed(0)
    emb = {m: F.normalize(torch.randn(4, 3), dim=-1) for m in ("image", "text", "audio")}
    negs = Negatives(F.normalize(torch.randn(4, 2, 3), dim=-1))
    s = torch.tensor(4.0)
    _, plain = multi_contrastive(emb, s)
    _, pairs = multi_contrastive(emb, s, negatives={direction("text", "image"): negs})
    expected = info_nce(emb["image"], emb["text"], s, negatives_a=negs)
    assert torch.equal(pairs["image-text"], expected)
    assert torch.equal(pairs["image-audio"], plain["image-audio"])
    assert torch.equal(pairs["text-audio"], plain["text-audio"])
    with pytest.raises(ValueError, match="name no pair"):
        multi_contrastive(emb, s, negatives={direction("text", "video"): negs})


def test_batch_reads_negatives_from_the_decoded_dict_and_slices_them():
    key = direction("text", "image")
    d = {
        "image": torch.rand(4, 1, 2, 2),
        "image_present": torch.ones(4),
        "text": torch.randint(1, 9, (4, 3)),
        "text_present": torch.ones(4),
        "label": torch.tensor([0, -1, 1, 2]),
        negatives_key(key): torch.rand(4, 2, 1, 2, 2),
        negatives_present_key(key): torch.tensor([[1.0, 1], [1, 0], [0, 0], [1, 1]]),
    }
    batch = Batch.from_dict(d)
    assert batch.modalities == ["image", "text"]
    assert batch.negatives[key].shape == (4, 2, 1, 2, 2)
    part = batch.slice(slice(1, 3))
    assert part.negatives[key].shape == (2, 2, 1, 2, 2)
    assert part.negatives_present[key].tolist() == [[1, 0], [0, 0]]


def _model_and_batch(k: int = 3):
    torch.manual_seed(0)
    cfg = load_config(None, ["model.embed_dim=16"])
    prep = Preprocessing(["image", "text"], image_size=28, image_channels=1, text_max_len=16)
    model = build_model(cfg, prep)
    batch = Batch(
        inputs={"image": torch.rand(4, 1, 28, 28), "text": torch.randint(1, 257, (4, 16))},
        present={"image": torch.ones(4), "text": torch.tensor([1.0, 1, 1, 0])},
        label=torch.zeros(4, dtype=torch.long),
    )
    # Hard image negatives for the text rows: other rows' images, slightly changed.
    hard = batch.inputs["image"][torch.tensor([1, 2, 3, 0])] + 0.05 * torch.rand(4, 1, 28, 28)
    negatives = torch.stack([hard] * k, 1).requires_grad_()
    present = torch.ones(4, k)
    present[0, 1:] = 0  # rows may hold fewer than K
    return cfg, model, batch, negatives, present


def _contrastive(cfg, model, batch):
    settings = CONTRASTIVE.settings(cfg)
    return CONTRASTIVE.loss(model(batch), batch, settings, None)[0]


def test_joint_model_negatives_make_the_loss_harder_and_train_the_tower():
    cfg, model, batch, negatives, present = _model_and_batch()
    key = direction("text", "image")
    plain = _contrastive(cfg, model, batch)
    with_negs = Batch(
        inputs=batch.inputs,
        present=batch.present,
        label=batch.label,
        negatives={key: negatives},
        negatives_present={key: present},
    )
    out = model(with_negs)
    assert out.negatives[key].shape == (4, 3, 16)
    assert not out.negatives[key][0, 1:].any()  # absent: zeros, never encoded
    hard = _contrastive(cfg, model, with_negs)
    assert hard.item() > plain.item()
    hard.backward()
    grad = negatives.grad.abs().flatten(2).sum(-1)
    assert bool((grad[present > 0] > 0).all()) and not grad[present == 0].any()
    # none present: exactly the loss without negatives (the same rows through the towers)
    none = Batch(
        inputs=batch.inputs,
        present=batch.present,
        label=batch.label,
        negatives={key: negatives.detach()},
        negatives_present={key: torch.zeros(4, 3)},
    )
    assert torch.equal(_contrastive(cfg, model, none), plain)
