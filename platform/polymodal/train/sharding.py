"""A sharded (FSDP2) model's full state and back: built on the meta device and filled from
rank 0's whole model, its weights and optimizer state gathered on rank 0 for validation and
checkpoints, and a checkpoint's full state spread over the shards."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, ValueType

M = TypeVar("M", bound=nn.Module)
# Full state dicts: gathered to the CPU of rank 0 only (the other ranks never hold the whole
# model), spread from one every rank holds, or from rank 0's alone.
OPTIONS: dict[str, dict[str, Any]] = {
    "gather": {"full_state_dict": True, "cpu_offload": True},
    "spread": {"full_state_dict": True},
    "from_rank0": {"full_state_dict": True, "broadcast_from_rank0": True},
}


def _options(kind: str) -> StateDictOptions:
    # torch.distributed.checkpoint (with DTensor) is imported here, not at the top: it takes
    # ~0.6 s, which every Train worker of a DDP run would pay at start for nothing.
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**OPTIONS[kind])


def build_on_meta(build: Callable[[], M]) -> M:
    """The model with no memory behind its tensors, to be sharded first (spread_from_rank0
    fills it): no rank holds the whole model for sharding's sake. A tower that cannot be
    built so (one reading weights at build time, say) is built whole, as before."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            # A tower that reads its weights at build time copies them into nothing.
            warnings.filterwarnings("ignore", "copying from a non-meta parameter")
            return build()
    except Exception as exc:  # noqa: BLE001 - any failure falls back to the whole build
        print(f"fsdp: building on the meta device failed ({type(exc).__name__}); built whole")
        return build()


def spread_from_rank0(model: nn.Module, whole: nn.Module | None, device: torch.device) -> None:
    """Every rank, once its meta-built model is sharded: its shards, and the weights FSDP
    leaves whole, allocated on `device` and set from rank 0's `whole` model (None on the
    others); buffers, those no state_dict holds too, likewise."""
    if not any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        return  # built whole (build_on_meta's fallback): every rank holds the same weights
    model.to_empty(device=device)
    state = whole.state_dict() if whole is not None else {}
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, cast("dict[str, ValueType]", state), options=_options("from_rank0"))
    buffers = list(model.buffers())
    if whole is not None:
        for mine, theirs in zip(buffers, whole.buffers(), strict=True):
            mine.copy_(theirs)
    for buffer in buffers:
        dist.broadcast(buffer, src=0)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every rank calls it (a collective); rank 0 gets the plain model's state_dict, with the
    names a model built by build_model loads, and the other ranks an empty dict."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.tensor import DTensor

    # A model's state holds tensors only; torch types it as any state value.
    state = cast(dict[str, torch.Tensor], get_model_state_dict(model, options=_options("gather")))
    # The weights FSDP left whole and the buffers come back as the live tensors: copies, so
    # that the state stays what it was when training goes on.
    tensors = [*model.parameters(), *model.buffers()]
    live = {t.data_ptr() for t in tensors if not isinstance(t, DTensor)}
    return {k: v.clone() if v.data_ptr() in live else v for k, v in state.items()}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """As full_model_state, for the optimizer: its state keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options("gather"))


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every rank, with the full state: each keeps its own shards."""
    # torch asks for a dict of any state value (dict is invariant: a dict of tensors is not one).
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, cast("dict[str, ValueType]", state), options=_options("spread"))


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options("spread"))
