"""A sharded (FSDP2) model's full state and back: the weights and optimizer state gathered on
rank 0 for validation and checkpoints, and a checkpoint's full state spread over the shards."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

if TYPE_CHECKING:
    from torch.distributed.checkpoint.state_dict import ValueType

# Gathered to the CPU of rank 0 only: the other ranks never hold the whole model.
GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
SPREAD = StateDictOptions(full_state_dict=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every rank calls it (a collective); rank 0 gets the plain model's state_dict, with the
    names a model built by build_model loads, and the other ranks an empty dict."""
    # A model's state holds tensors only; torch types it as any state value.
    state = cast(dict[str, torch.Tensor], get_model_state_dict(model, options=GATHER))
    # The weights FSDP left whole come back as the live tensors: copies, so that the state
    # stays what it was when training goes on.
    live = {p.data_ptr() for p in model.parameters() if not isinstance(p, DTensor)}
    return {k: v.clone() if v.data_ptr() in live else v for k, v in state.items()}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """As full_model_state, for the optimizer: its state keyed by parameter name."""
    return get_optimizer_state_dict(model, optimizer, options=GATHER)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every rank, with the full state: each keeps its own shards."""
    # torch asks for a dict of any state value (dict is invariant: a dict of tensors is not one).
    set_model_state_dict(model, cast("dict[str, ValueType]", state), options=SPREAD)


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    set_optimizer_state_dict(model, optimizer, state, options=SPREAD)
