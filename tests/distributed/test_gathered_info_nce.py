"""info_nce with gathered negatives on 2 real gloo processes equals the single-process loss."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from polymodal.objectives.pairwise import info_nce
from tests.distributed.helpers import run_on_ranks

WORLD, B_LOCAL, DIM = 2, 4, 6


def _model(seed: int = 0) -> nn.ModuleDict:
    torch.manual_seed(seed)
    return nn.ModuleDict({"a": nn.Linear(5, DIM), "b": nn.Linear(7, DIM)})


def _loss(model, xa, xb, scale, gather):
    a = nn.functional.normalize(model["a"](xa), dim=-1)
    b = nn.functional.normalize(model["b"](xb), dim=-1)
    return info_nce(a, b, scale.exp(), gather)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * B_LOCAL, 5, generator=g), torch.randn(
        WORLD * B_LOCAL, 7, generator=g
    )


def _worker(rank: int, world: int, gather: str) -> list[torch.Tensor]:
    model = _model()
    scale = nn.Parameter(torch.tensor(2.0))
    xa, xb = _data()
    rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    loss = _loss(model, xa[rows], xb[rows], scale, gather)
    loss.backward()
    grads = [p.grad for p in model.parameters()] + [scale.grad]
    for g in grads:  # what DDP does: average gradients over ranks
        dist.all_reduce(g)
        g /= world
    return [g.clone() for g in grads]


@pytest.mark.distributed
@pytest.mark.parametrize("gather", ["local", "full"])
def test_gathered_gradients_equal_single_process(gather):
    model = _model()
    scale = nn.Parameter(torch.tensor(2.0))
    xa, xb = _data()
    _loss(model, xa, xb, scale, "none").backward()
    expected = [p.grad for p in model.parameters()] + [scale.grad]

    got = run_on_ranks(WORLD, _worker, gather)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
