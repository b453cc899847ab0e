"""Reconstruction per modality (the joint autoencoder): Σ_i ‖x_i − dec_i(enc_i(x_i))‖².

Images use the mean squared error per pixel; text, being discrete bytes, uses cross-entropy
over byte positions (padding ignored). Rows missing a modality do not count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polymodal.data.decode import TEXT_PAD


def image_reconstruction(pred: torch.Tensor, target: torch.Tensor, present: torch.Tensor):
    per_row = (pred - target).pow(2).flatten(1).mean(1)
    return (per_row * present).sum() / present.sum().clamp(min=1.0)


def text_reconstruction(logits: torch.Tensor, ids: torch.Tensor, present: torch.Tensor):
    ids = ids[:, : logits.shape[1]].masked_fill(present.unsqueeze(1).eq(0), TEXT_PAD)
    return F.cross_entropy(logits.flatten(0, 1), ids.flatten(), ignore_index=TEXT_PAD)


RECONSTRUCTION_LOSSES = {"image": image_reconstruction, "text": text_reconstruction}


def reconstruction_loss(
    reconstructions: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    per_modality = {
        m: RECONSTRUCTION_LOSSES[m](pred, batch[m], batch[f"{m}_present"])
        for m, pred in reconstructions.items()
    }
    total = torch.stack(list(per_modality.values())).sum()
    return total, {m: v.detach() for m, v in per_modality.items()}
