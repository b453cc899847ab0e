"""Guided filtering and distillation on 2 and 3 real gloo processes equal one process over the
global batch: the loss and the gradients of every input (features, negatives, scale, bias)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from polymodal.objectives.distill import pair_kl
from polymodal.objectives.guide import Guide
from polymodal.objectives.negatives import Negatives
from polymodal.objectives.pairwise import info_nce, multi_contrastive, sigmoid_loss

N, K, D, G = 6, 2, 4, 3  # global batch, negatives per row, features, guide features
CASES = [
    *itertools.product(("infonce", "sigmoid"), ("local", "full"), ("pair", "multi")),
    ("distill", "local", "pair"),
]


def _unit(g, *shape):
    return nn.functional.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _data():
    g = torch.Generator().manual_seed(5)
    leaves = [_unit(g, N, D), _unit(g, N, D), _unit(g, N, K, D), _unit(g, N, K, D)]
    # The guide agrees with the features, roughly: some negatives score near the positive.
    guide = [
        nn.functional.normalize(x[..., :G] + 0.3 * _unit(g, *x.shape[:-1], G), dim=-1)
        for x in leaves
    ]
    present = torch.tensor([True, True, False, True, True, True])
    return leaves, guide, present


def _loss(case, rows: slice, gather: str, guided: bool = True):
    kind, _, api = case
    leaves, guide, present = _data()
    a, b, neg_b, neg_a = (t[rows].clone().requires_grad_() for t in leaves)
    ga, gb, gneg_b, gneg_a = (t[rows] for t in guide)
    scale = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    valid = present[rows]
    if kind == "distill":  # the teacher: the guide's features, another width
        loss = pair_kl(a, b, ga, gb, valid, temperature=0.3) * scale
    elif api == "multi":
        loss, _ = multi_contrastive(
            {"x": a, "y": b},
            scale.exp(),
            kind=kind,
            gather=gather,
            present={"x": valid.double(), "y": torch.ones(a.shape[0])},
            logit_bias=bias,
            chunk_size=4,
            negatives={"x->y": Negatives(neg_b), "y->x": Negatives(neg_a)},
            guide={"x": ga, "y": gb, "x->y": gneg_b, "y->x": gneg_a} if guided else None,
            guide_margin=0.05,
        )
    else:
        kw = {"logit_bias": bias, "chunk_size": 4} if kind == "sigmoid" else {}
        pair_loss = info_nce if kind == "infonce" else sigmoid_loss
        loss = pair_loss(
            a,
            b,
            scale.exp(),
            gather=gather,
            valid=valid,
            negatives_b=Negatives(neg_b),
            negatives_a=Negatives(neg_a),
            guide=Guide(ga, gb, gneg_b, gneg_a, margin=0.05) if guided else None,
            **kw,
        )
    loss.backward()
    params = [a, b, neg_b, neg_a, scale, bias]
    return loss.detach(), [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


def _on_rank(rank: int, world: int):
    from tests.distributed.helpers import as_ddp

    b = N // world
    rows = slice(rank * b, (rank + 1) * b)
    return [as_ddp(*_loss(case, rows, case[1]), rows=4, world=world) for case in CASES]


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_guide_and_distill_are_exact_across_ranks(world):
    from tests.distributed.helpers import run_on_ranks

    got = run_on_ranks(world, _on_rank)
    for case, (loss, grads) in zip(CASES, got):
        exp_loss, exp_grads = _loss(case, slice(0, N), "none")
        torch.testing.assert_close(loss, exp_loss, rtol=1e-9, atol=1e-12, msg=str(case))
        for name, g, e in zip(("a", "b", "neg_b", "neg_a", "scale", "bias"), grads, exp_grads):
            torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12, msg=f"{case} {name}")
        if case[0] != "distill":  # the guide did mask something: not the unguided loss
            unguided, _ = _loss(case, slice(0, N), "none", guided=False)
            assert not torch.isclose(exp_loss, unguided), case
