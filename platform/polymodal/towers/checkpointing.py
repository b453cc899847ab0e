"""Activation checkpointing of a tower (model.<modality>.activation_checkpointing): its repeated
blocks recompute their activations during backward instead of keeping them from the forward."""

from __future__ import annotations

import functools

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)

CONTAINERS = (nn.ModuleList, nn.Sequential)


def repeated_blocks(module: nn.Module) -> list[nn.Module]:
    """The outermost runs of blocks: the children with weights of a ModuleList or Sequential
    when they are all of one class (transformer layers, CNN stages; one layer counts)."""
    if isinstance(module, CONTAINERS):
        kids = [c for c in module.children() if next(c.parameters(), None) is not None]
        if kids and len({type(c) for c in kids}) == 1:
            return kids
    return [b for child in module.children() for b in repeated_blocks(child)]


def checkpoint_activations(tower: nn.Module, where: str) -> int:
    """Wrap each of the tower's repeated blocks in torch's non-reentrant checkpoint (the RNG
    state is replayed, so dropout masks and gradients are those of the plain tower; BatchNorm's
    running statistics move twice per step). state_dict keys stay as they were. Returns how
    many blocks; a tower without any is refused, naming `where`."""
    blocks = {id(b) for b in repeated_blocks(tower)}
    if not blocks:
        raise ValueError(f"{where}.activation_checkpointing: {type(tower).__name__} has no blocks")
    wrapper = functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    apply_activation_checkpointing(tower, wrapper, check_fn=lambda m: id(m) in blocks)
    return len(blocks)
