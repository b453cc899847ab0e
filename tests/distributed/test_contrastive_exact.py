"""Gathered contrastive losses on 1, 2 and 4 real gloo processes equal one process computing
the full batch: loss and gradients of every parameter, temperature and bias included."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from polymodal.objectives.gather import RankMismatchError
from polymodal.objectives.pairwise import multi_contrastive

N = 8  # global batch
IN = {"image": 5, "text": 7, "audio": 3}
CASES = [
    (kind, gather, m, extras)
    for kind, gather, m, extras in itertools.product(
        ("infonce", "sigmoid"), ("local", "full", "none"), (2, 3), (False, True)
    )
]


def _setup(n_modalities: int):
    torch.manual_seed(0)
    mods = list(IN)[:n_modalities]
    model = nn.ModuleDict({m: nn.Linear(IN[m], 6) for m in mods}).double()
    scale = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))
    bias = nn.Parameter(torch.tensor(-2.0, dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    x = {m: torch.randn(N, IN[m], generator=g, dtype=torch.float64) for m in mods}
    present = {m: (torch.rand(N, generator=g) > 0.25).double() for m in mods}
    keys = torch.tensor([0, 1, 0, 2, 1, -1, 3, 0])
    return model, scale, bias, x, present, keys


def _loss(case, rows: slice, gather: str):
    kind, _, n_mod, extras = case
    model, scale, bias, x, present, keys = _setup(n_mod)
    emb = {m: nn.functional.normalize(model[m](x[m][rows]), dim=-1) for m in model}
    loss, _ = multi_contrastive(
        emb,
        scale.exp(),
        kind=kind,
        gather=gather,
        logit_bias=bias,
        chunk_size=3,
        present={m: p[rows] for m, p in present.items()} if extras else None,
        keys=keys[rows] if extras else None,
    )
    loss.backward()
    params = [*model.parameters(), scale, bias]
    return loss.detach(), [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


def _on_rank(rank: int, world: int):
    from tests.distributed.helpers import as_ddp

    b = N // world
    rows = slice(rank * b, (rank + 1) * b)
    # The model's parameters are shared: DDP averages their gradients, we average the loss alike.
    return [as_ddp(*_loss(case, rows, case[1]), rows=0, world=world) for case in CASES]


def _expected(case, world: int):
    if case[1] != "none":
        return _loss(case, slice(0, N), "none")
    # "none" means each rank's own batch: the reference is the mean of per-slice losses.
    b = N // world
    parts = [_loss(case, slice(r * b, (r + 1) * b), "none") for r in range(world)]
    loss = sum(p[0] for p in parts) / world
    grads = [sum(g) / world for g in zip(*(p[1] for p in parts))]
    return loss, grads


@pytest.mark.distributed
@pytest.mark.parametrize("world", [1, 2, 4])
def test_every_kind_gather_and_modality_count_is_exact(world):
    from tests.distributed.helpers import run_on_ranks

    got = run_on_ranks(world, _on_rank)
    for case, (loss, grads) in zip(CASES, got):
        exp_loss, exp_grads = _expected(case, world)
        torch.testing.assert_close(loss, exp_loss, rtol=1e-9, atol=1e-12, msg=str(case))
        for g, e in zip(grads, exp_grads):
            torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12, msg=str(case))


def test_masks_drop_rows_and_keys_add_positives():
    torch.manual_seed(0)
    a = nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    b = nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    s = torch.tensor(3.0, dtype=torch.float64)
    present = {"x": torch.tensor([1.0, 1, 1, 0]), "y": torch.ones(4)}
    masked, _ = multi_contrastive({"x": a, "y": b}, s, present=present)
    dropped, _ = multi_contrastive({"x": a[:3], "y": b[:3]}, s)
    torch.testing.assert_close(masked, dropped)  # a missing row is as if it were not there
    same, _ = multi_contrastive({"x": a, "y": b}, s, keys=torch.tensor([5, 5, 6, 7]))
    plain, _ = multi_contrastive({"x": a, "y": b}, s)
    assert not torch.allclose(same, plain)


def _mismatch(rank: int, world: int):
    x = torch.randn(3 if rank == 0 else 2, 4)
    try:
        multi_contrastive({"a": x, "b": x}, torch.tensor(1.0))
    except RankMismatchError as exc:
        return str(exc)
    return "no error"


@pytest.mark.distributed
def test_unequal_batches_fail_fast_instead_of_hanging():
    from tests.distributed.helpers import run_on_ranks

    message = run_on_ranks(2, _mismatch)
    assert "batch sizes differ across ranks [3, 2]" in message
