"""AdamW with decoupled weight decay on weights only, and a warm-up + cosine learning rate."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from polymodal.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    # A module's lr_scale (a pretrained tower's) applies to all of its weights. (A float: torch
    # types a module's unknown attributes as its tensors and submodules.)
    scale = {
        id(p): cast(float, m.lr_scale)
        for m in model.modules()
        if hasattr(m, "lr_scale")
        for p in m.parameters()
    }
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Biases, norms and the temperature are not regularised (as in CLIP).
        decay = not (p.ndim < 2 or "log_logit_scale" in name)
        groups.setdefault((scale.get(id(p), 1.0), decay), []).append(p)
    return torch.optim.AdamW(
        [
            {"params": ps, "lr": cfg.lr * s, "weight_decay": cfg.weight_decay if decay else 0.0}
            # Fixed order (decayed, not decayed; then scaled towers) so saved states load.
            for (s, decay), ps in sorted(
                groups.items(), key=lambda g: (g[0][0] != 1.0, not g[0][1])
            )
        ],
        lr=cfg.lr,
    )


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine down to min_ratio at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    warmup = min(cfg.warmup_steps, max(total_steps // 5, 1))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, warmup, cfg.min_lr_ratio)
    )
