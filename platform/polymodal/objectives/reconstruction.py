"""Reconstruction per modality (the joint autoencoder): Σ_i ‖x_i − dec_i(enc_i(x_i))‖².

Images use the mean squared error per pixel, audio per log-mel cell, vectors per
standardised feature; text, being discrete
bytes, uses cross-entropy over byte positions (padding ignored). Rows missing a modality do
not count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polymodal.data.decode import TEXT_PAD


def image_reconstruction_sum(pred, target, present) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ over present rows of the per-pixel (or per-mel-cell) MSE, number of present rows)."""
    per_row = (pred - target).pow(2).flatten(1).mean(1)
    return (per_row * present).sum(), present.sum()


def _text_targets(ids, present) -> torch.Tensor:
    """Byte ids to reconstruct: those of absent rows become padding (ignored)."""
    return ids.masked_fill(present.unsqueeze(1).eq(0), TEXT_PAD)


def text_reconstruction_sum(logits, ids, present) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ of byte cross-entropies over real bytes of present rows, number of such bytes)."""
    ids = _text_targets(ids[:, : logits.shape[1]], present)
    total = F.cross_entropy(
        logits.flatten(0, 1), ids.flatten(), ignore_index=TEXT_PAD, reduction="sum"
    )
    return total, ids.ne(TEXT_PAD).sum().to(logits.dtype)


RECONSTRUCTION_SUMS = {
    "image": image_reconstruction_sum,
    "text": text_reconstruction_sum,
    "audio": image_reconstruction_sum,  # a spectrogram is a one-channel image of real values
    "vector": image_reconstruction_sum,  # MSE per standardised feature
}


def image_reconstruction(pred, target, present) -> torch.Tensor:
    total, count = image_reconstruction_sum(pred, target, present)
    return total / count.clamp(min=1)


def text_reconstruction(logits, ids, present) -> torch.Tensor:
    total, count = text_reconstruction_sum(logits, ids, present)
    return total / count.clamp(min=1)


def reconstruction_counts(batch: dict[str, torch.Tensor], modalities) -> dict[str, torch.Tensor]:
    """What each modality's mean divides by, over a whole batch (for the gradient cache)."""
    counts = {}
    for m in modalities:
        present = batch[f"{m}_present"]
        if m == "text":
            counts[m] = _text_targets(batch[m], present).ne(TEXT_PAD).sum().float()
        else:
            counts[m] = present.sum()
    return counts


def reconstruction_loss(
    reconstructions: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    counts: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ over modalities of each modality's mean error; `counts` overrides the denominators."""
    per_modality = {}
    for m, pred in reconstructions.items():
        total, count = RECONSTRUCTION_SUMS[m](pred, batch[m], batch[f"{m}_present"])
        denom = counts[m] if counts is not None else count
        per_modality[m] = total / denom.clamp(min=1)
    total = torch.stack(list(per_modality.values())).sum()
    return total, {m: v.detach() for m, v in per_modality.items()}
