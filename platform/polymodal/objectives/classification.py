"""Cross-entropy of the fused-embedding classifier; rows without a label (-1) are ignored."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if bool(labels.ge(0).any()):
        return F.cross_entropy(logits, labels, ignore_index=-1)
    return logits.sum() * 0.0  # keeps the graph (and DDP) happy on an unlabelled batch
