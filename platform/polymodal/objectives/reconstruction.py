"""Reconstruction per modality (the joint autoencoder): Σ_i ‖x_i − dec_i(enc_i(x_i))‖².

Each modality's error is its Modality.reconstruction_sum (polymodal.modalities): MSE per
pixel, log-mel cell or standardised feature; cross-entropy over token positions for text.
Rows missing a modality do not count.
"""

from __future__ import annotations

import torch

from polymodal.batch import Batch
from polymodal.modalities import MODALITIES


def reconstruction_mean(modality: str, pred, target, present, count=None) -> torch.Tensor:
    """One modality's mean error over the present rows (or real tokens) of a batch; `count`
    replaces the denominator (the gradient cache's whole-batch count)."""
    total, own = MODALITIES[modality].reconstruction_sum(pred, target, present)
    return total / (own if count is None else count).clamp(min=1)


def reconstruction_counts(batch: Batch, modalities) -> dict[str, torch.Tensor]:
    """What each modality's mean divides by, over a whole batch (for the gradient cache)."""
    counts = {}
    for m in modalities:
        counts[m] = MODALITIES[m].reconstruction_count(batch.inputs[m], batch.present[m])
    return counts


def reconstruction_loss(
    reconstructions: dict[str, torch.Tensor],
    batch: Batch,
    counts: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ over modalities of each modality's mean error; `counts` overrides the denominators."""
    per_modality = {
        m: reconstruction_mean(
            m, pred, batch.inputs[m], batch.present[m], counts[m] if counts is not None else None
        )
        for m, pred in reconstructions.items()
    }
    total = torch.stack(list(per_modality.values())).sum()
    return total, {m: v.detach() for m, v in per_modality.items()}
