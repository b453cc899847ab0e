"""CLIP's symmetric InfoNCE with negatives gathered across ranks, summed over modality pairs."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from polymodal.objectives.gather import gather_with_grad, world

GATHER_MODES = ("local", "full", "none")


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor,
    gather: str = "local",
    a_all: torch.Tensor | None = None,
    b_all: torch.Tensor | None = None,
) -> torch.Tensor:
    """½·(CE(a→b) + CE(b→a)), each averaged over rows, positives on the diagonal.

    a, b: this rank's L2-normalised features [B_local, D]; logit_scale: the multiplier
    (already exponentiated). gather:
      - "local": this rank's rows against all ranks' columns (B_local x B_global logits);
      - "full": the whole B_global x B_global matrix on every rank;
      - "none": negatives from the local batch only.
    With equal B_local on W ranks, "local" and "full" give, after DDP's gradient averaging,
    exactly the gradients of the single-process loss over all W·B_local rows.
    a_all / b_all: already-gathered features, so a modality is gathered once per step.
    """
    if gather not in GATHER_MODES:
        raise ValueError(f"gather must be one of {GATHER_MODES}, got {gather!r}")
    rank, world_size = world()
    if gather == "none" or world_size == 1:
        logits = logit_scale * a @ b.t()
        labels = torch.arange(a.shape[0], device=a.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    a_all = gather_with_grad(a) if a_all is None else a_all
    b_all = gather_with_grad(b) if b_all is None else b_all
    if gather == "full":
        logits = logit_scale * a_all @ b_all.t()
        labels = torch.arange(a_all.shape[0], device=a.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    labels = torch.arange(a.shape[0], device=a.device) + rank * a.shape[0]
    loss_a = F.cross_entropy(logit_scale * a @ b_all.t(), labels)
    loss_b = F.cross_entropy(logit_scale * b @ a_all.t(), labels)
    return 0.5 * (loss_a + loss_b)


def pair_name(a: str, b: str) -> str:
    return f"{a}-{b}"


def multi_info_nce(
    embeddings: dict[str, torch.Tensor],
    logit_scale: torch.Tensor,
    gather: str = "local",
    pair_weights: dict[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of info_nce over every modality pair; each modality is gathered once."""
    pair_weights = pair_weights or {}
    gathered = {}
    if gather != "none" and world()[1] > 1:
        gathered = {m: gather_with_grad(x) for m, x in embeddings.items()}
    total = torch.zeros((), device=logit_scale.device)
    per_pair = {}
    for a, b in itertools.combinations(embeddings, 2):
        name = pair_name(a, b)
        weight = pair_weights.get(name, pair_weights.get(pair_name(b, a), 1.0))
        loss = info_nce(
            embeddings[a], embeddings[b], logit_scale, gather, gathered.get(a), gathered.get(b)
        )
        per_pair[name] = loss.detach()
        total = total + weight * loss
    return total, per_pair
