"""Running a function on W real gloo processes and collecting what rank 0 saved."""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world: int, init_file: str, fn: Callable, out: str, args: tuple) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    result = fn(rank, world, *args)  # an exception: spawn reports it with its traceback
    if rank == 0:
        torch.save(result, out)
    dist.barrier()  # every rank's work is done and saved
    # Leave without tearing gloo down: its threads outliving a peer's teardown aborted a
    # rank now and then ("terminate called without an active exception", SIGABRT), even
    # after the barrier, on a busy 2-core host.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# Ranks are forked from one server process that imported torch and polymodal's models once
# (Python's forkserver), not started as fresh interpreters that import them again (spawn:
# ~3 s of CPU a rank). The server is single-threaded, unlike a test process that runs Ray.
multiprocessing.set_forkserver_preload(["torch", "polymodal.models.build", __name__])


def run_on_ranks(world: int, fn: Callable, *args):
    """fn(rank, world, *args) on `world` processes; returns rank 0's return value."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pt")
        mp.start_processes(
            _entry,
            args=(world, os.path.join(tmp, "init"), fn, out, args),
            nprocs=world,
            start_method="forkserver",
        )
        return torch.load(out, weights_only=False)  # written by our own test process


def as_ddp(loss: torch.Tensor, grads: list[torch.Tensor], rows: int, world: int):
    """(loss, gradients) of one rank as DDP leaves them, comparable with one process over the
    global batch: the loss and shared tensors' gradients (grads[rows:]) averaged over ranks;
    the first `rows` gradients belong to this rank's rows, so each rank's share (1/W) is laid
    side by side in rank order."""
    for t in [loss, *grads[rows:]]:
        dist.all_reduce(t)
        t /= world
    laid = []
    for g in grads[:rows]:
        parts = [torch.empty_like(g) for _ in range(world)]
        dist.all_gather(parts, g / world)
        laid.append(torch.cat(parts))
    return loss, laid + grads[rows:]
