"""Gathering features from every rank with gradients flowing back to their owners."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """(rank, world_size), (0, 1) outside torch.distributed."""
    return (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (rank order) along dim 0.

    Backward reduce-scatters (sums) the gradient of the gathered tensor, so each rank's
    rows receive the gradient of every rank's loss with respect to them.
    """
    if not distributed():
        return x
    out = funcol.all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD)
    return funcol.wait_tensor(out)
