"""How a pretrained tower trains: freeze (LiT's locked tower: never), finetune, or
lock_then_unlock (locked until unlock()), at its own learning-rate scale."""

from __future__ import annotations

import torch
from torch import nn

TUNINGS = ("freeze", "finetune", "lock_then_unlock")


class Tunable(nn.Module):
    """Base of the pretrained towers: `self.net` holds the pretrained network. A locked
    tower runs it in eval mode (no dropout, fixed BatchNorm statistics) without gradients."""

    net: nn.Module

    def __init__(self, tuning: str = "finetune", lr_scale: float = 1.0):
        super().__init__()
        if tuning not in TUNINGS:
            raise ValueError(f"tuning must be one of {', '.join(TUNINGS)}, got {tuning!r}")
        self.lr_scale = lr_scale  # build_optimizer gives these weights optim.lr * lr_scale
        self.tuning = tuning
        self.locked = tuning != "finetune"

    def freeze_if_asked(self) -> None:
        """Call once self.net exists: a frozen tower has no gradients at all, so DDP and the
        optimizer skip its weights."""
        if self.tuning == "freeze":
            self.net.requires_grad_(False)

    def unlock(self) -> None:
        self.locked = False
        self.net.train(self.training)

    def train(self, mode: bool = True) -> Tunable:
        super().train(mode)
        if self.locked:
            self.net.eval()
        return self

    def grad_enabled(self) -> bool:
        return torch.is_grad_enabled() and not self.locked


class ImageTunable(Tunable):
    """Base of the pretrained image towers: images in [0, 1] (grey repeats as RGB), normalised
    with the weights' mean and std, → pooled(x), by default `net`'s output."""

    mean: torch.Tensor  # buffers [1, channels, 1, 1]
    std: torch.Tensor

    def __init__(self, mean, std, tuning: str = "finetune", lr_scale: float = 1.0):
        super().__init__(tuning, lr_scale)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        with torch.set_grad_enabled(self.grad_enabled()):
            return self.pooled((images - self.mean) / self.std)
