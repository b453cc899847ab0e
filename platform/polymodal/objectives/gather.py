"""Gathering features from every rank: with gradients flowing back to their owners, or
without (masks, keys), and a guard that fails fast when ranks hold different batch sizes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol


class RankMismatchError(RuntimeError):
    pass


_alone = False  # inside single_process(): one rank computes on its own


def distributed() -> bool:
    if _alone:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def single_process() -> Iterator[None]:
    """Within: losses gather nothing, as outside torch.distributed (rank 0 validating alone
    while the other ranks wait; negatives are then the batch's own)."""
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


def world() -> tuple[int, int]:
    """(rank, world_size), (0, 1) outside torch.distributed."""
    return (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)


def _world_group() -> dist.ProcessGroup:
    group = dist.group.WORLD
    assert group is not None, "torch.distributed is initialised (distributed())"
    return group


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (rank order) along dim 0.

    Backward reduce-scatters (sums) the gradient of the gathered tensor, so each rank's
    rows receive the gradient of every rank's loss with respect to them.
    """
    if not distributed():
        return x
    out = funcol.all_gather_single_autograd(x.contiguous(), 0, _world_group())
    return funcol.wait_tensor(out)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows, outside autograd (masks, keys, ids)."""
    if not distributed():
        return x
    dtype = x.dtype
    x = x.to(torch.int64) if dtype == torch.bool else x
    out = funcol.wait_tensor(funcol.all_gather_single(x.detach().contiguous(), 0, _world_group()))
    return out.to(dtype)


def check_equal_batch(n: int) -> None:
    """Raise on every rank (instead of hanging in a collective) if batch sizes differ."""
    if not distributed():
        return
    sizes = gather_no_grad(torch.tensor([n], dtype=torch.int64, device=_device()))
    if bool((sizes != n).any()):
        raise RankMismatchError(
            f"rank {dist.get_rank()}: batch sizes differ across ranks {sizes.tolist()}; gathered "
            "contrastive losses need equal batches (drop_last=True, or pad with masked rows)"
        )


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
