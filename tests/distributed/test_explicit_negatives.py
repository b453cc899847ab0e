"""Explicit negatives on 2 and 3 real gloo processes equal one process over the global batch
with every rank's negatives: the loss and the gradients of a, b, negatives, scale and bias."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from polymodal.objectives.negatives import Negatives
from polymodal.objectives.pairwise import info_nce, multi_contrastive, sigmoid_loss

N, K, D = 6, 2, 4  # global batch (2 ranks x 3 rows, 3 x 2), negatives per row, features
CASES = list(
    itertools.product(("infonce", "sigmoid"), ("local", "full"), ("pair", "multi"), (False, True))
)


def _data():
    g = torch.Generator().manual_seed(3)

    def unit(*shape):
        return nn.functional.normalize(
            torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1
        )

    leaves = [unit(N, D), unit(N, D), unit(N, K, D), unit(N, K, D)]  # a, b, b's and a's negatives
    present = torch.tensor([True, True, False, True, True, True])
    keys = torch.tensor([0, 1, 0, 2, -1, 1])
    negatives_valid = torch.rand(N, K, generator=g) > 0.3
    negatives_valid[1] = False  # a row with none of its K negatives
    return leaves, present, keys, negatives_valid


def _loss(case, rows: slice, gather: str):
    """(loss, gradients of a, b, both negatives, scale and bias) over the rows `rows`."""
    kind, _, api, extras = case
    leaves, present, keys, negatives_valid = _data()
    a, b, neg_b, neg_a = (t[rows].clone().requires_grad_() for t in leaves)
    scale = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    mask = negatives_valid[rows] if extras else None
    negatives_b, negatives_a = Negatives(neg_b, mask), Negatives(neg_a, mask)
    if api == "multi":
        loss, _ = multi_contrastive(
            {"x": a, "y": b},
            scale.exp(),
            kind=kind,
            gather=gather,
            present={"x": present[rows].double(), "y": torch.ones(a.shape[0])} if extras else None,
            keys=keys[rows] if extras else None,
            logit_bias=bias,
            chunk_size=4,
            negatives={"x->y": negatives_b, "y->x": negatives_a},
        )
    else:
        kw = {"valid": present[rows], "keys": keys[rows]} if extras else {}
        if kind == "sigmoid":
            kw.update(logit_bias=bias, chunk_size=4)
        pair_loss = info_nce if kind == "infonce" else sigmoid_loss
        kw.update(gather=gather, negatives_b=negatives_b, negatives_a=negatives_a)
        loss = pair_loss(a, b, scale.exp(), **kw)
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
def test_negatives_are_exact_across_ranks(world):
    from tests.distributed.helpers import run_on_ranks

    got = run_on_ranks(world, _on_rank)
    for case, (loss, grads) in zip(CASES, got):
        exp_loss, exp_grads = _loss(case, slice(0, N), "none")
        torch.testing.assert_close(loss, exp_loss, rtol=1e-9, atol=1e-12, msg=str(case))
        for name, g, e in zip(("a", "b", "neg_b", "neg_a", "scale", "bias"), grads, exp_grads):
            torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12, msg=f"{case} {name}")
        assert bool(exp_grads[2].any()) and bool(exp_grads[3].any())  # negatives do train
