"""Cross-entropy of the fused-embedding classifier; rows without a label (-1) are ignored."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, count: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over labelled rows; `count` overrides the denominator (for the gradient cache).

    An unlabelled batch gives 0 while keeping the graph (DDP needs every parameter used).
    """
    total = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    total = (total * labels.ge(0)).sum()
    denom = labels.ge(0).sum() if count is None else count
    return total / denom.clamp(min=1)
