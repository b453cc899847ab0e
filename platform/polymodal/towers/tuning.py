"""How a pretrained tower trains: freeze (LiT's locked tower: never), finetune, or
lock_then_unlock (locked until unlock()), at its own learning-rate scale."""

from __future__ import annotations

import torch
from torch import nn

TUNINGS = ("freeze", "finetune", "lock_then_unlock")


class Tunable(nn.Module):
    """Base of the pretrained towers: `self.inner` holds the pretrained network. A locked
    tower runs it in eval mode (no dropout, fixed BatchNorm statistics) without gradients."""

    inner: nn.Module

    def __init__(self, tuning: str = "finetune", lr_scale: float = 1.0):
        super().__init__()
        if tuning not in TUNINGS:
            raise ValueError(f"tuning must be one of {', '.join(TUNINGS)}, got {tuning!r}")
        self.lr_scale = lr_scale  # build_optimizer gives these weights optim.lr * lr_scale
        self.tuning = tuning
        self.locked = tuning != "finetune"

    def freeze_if_asked(self) -> None:
        """Call once self.inner exists: a frozen tower has no gradients at all, so DDP and the
        optimizer skip its weights."""
        if self.tuning == "freeze":
            self.inner.requires_grad_(False)

    def unlock(self) -> None:
        self.locked = False
        self.inner.train(self.training)

    def train(self, mode: bool = True) -> Tunable:
        super().train(mode)
        if self.locked:
            self.inner.eval()
        return self

    def grad_enabled(self) -> bool:
        return torch.is_grad_enabled() and not self.locked
