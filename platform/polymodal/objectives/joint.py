"""The joint objective: each configured term computed from the model outputs, then combined
by a weighting from WEIGHTINGS. Every term is returned separately for logging."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from polymodal.batch import Batch, ModelOutput
from polymodal.config import ObjectiveConfig
from polymodal.objectives.classification import classification_loss
from polymodal.objectives.contrastive import multi_contrastive
from polymodal.objectives.reconstruction import reconstruction_counts, reconstruction_loss


def static_weighting(
    terms: dict[str, torch.Tensor], weights: dict[str, float], outputs: ModelOutput
) -> torch.Tensor:
    return torch.stack([weights[name] * loss for name, loss in terms.items()]).sum()


def uncertainty_weighting(
    terms: dict[str, torch.Tensor], weights: dict[str, float], outputs: ModelOutput
) -> torch.Tensor:
    """Kendall et al. 2018: sum of 1/2 (exp(-s_i) L_i + s_i), s_i learned per term. The
    configured weights only choose the terms (> 0); their sizes are learned."""
    log_vars = outputs.loss_log_vars
    return torch.stack(
        [0.5 * (torch.exp(-log_vars[name]) * loss + log_vars[name]) for name, loss in terms.items()]
    ).sum()


Weighting = Callable[[dict[str, torch.Tensor], dict[str, float], ModelOutput], torch.Tensor]
WEIGHTINGS: dict[str, Weighting] = {
    "static": static_weighting,
    "uncertainty": uncertainty_weighting,
}


def contrastive_keys(batch: Batch, positives: str) -> torch.Tensor | None:
    """Row keys whose equality makes two rows positives (None: only the diagonal)."""
    return {"diagonal": None, "label": batch.label, "text": batch.hashes.get("text")}[positives]


def contrastive_term(
    outputs: ModelOutput, batch: Batch, cfg: ObjectiveConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The contrastive loss over every pair; with matryoshka_dims, its mean over the full
    embedding and each renormalised prefix (logged as contrastive/dim<d>)."""
    c = cfg.contrastive

    def loss_of(embeddings: dict[str, torch.Tensor]):
        return multi_contrastive(
            embeddings,
            outputs.logit_scale,
            kind=c.kind,
            gather=c.gather,
            pair_weights=c.pair_weights,
            present={m: batch.present[m] for m in embeddings},
            keys=contrastive_keys(batch, c.positives),
            logit_bias=outputs.logit_bias,
            chunk_size=c.chunk_size,
        )

    loss, pairs = loss_of(outputs.embeddings)
    logs = {f"contrastive/{p}": v for p, v in pairs.items()}
    if c.matryoshka_dims:
        losses = [loss]
        for d in c.matryoshka_dims:
            prefixes = {m: F.normalize(e[:, :d], dim=-1) for m, e in outputs.embeddings.items()}
            losses.append(loss_of(prefixes)[0])
            logs[f"contrastive/dim{d}"] = losses[-1].detach()
        loss = torch.stack(losses).mean()
    return loss, logs


def per_sample_terms(
    outputs: ModelOutput,
    batch: Batch,
    cfg: ObjectiveConfig,
    counts: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Reconstruction and classification; `counts` (from batch_counts) fixes denominators."""
    weights = cfg.active_terms()
    terms: dict[str, torch.Tensor] = {}
    logs: dict[str, torch.Tensor] = {}
    if "reconstruction" in weights:
        terms["reconstruction"], parts = reconstruction_loss(
            outputs.reconstructions, batch, counts["reconstruction"] if counts else None
        )
        logs.update({f"reconstruction/{m}": v for m, v in parts.items()})
    if "classification" in weights:
        terms["classification"] = classification_loss(
            outputs.class_logits, batch.label, counts["classification"] if counts else None
        )
    return terms, logs


def batch_counts(batch: Batch, reconstructed: list[str]) -> dict:
    """Denominators of the per-sample terms over a whole batch, before it is split up."""
    return {
        "reconstruction": reconstruction_counts(batch, reconstructed),
        "classification": batch.label.ge(0).sum(),
    }


def joint_loss(
    outputs: ModelOutput, batch: Batch, cfg: ObjectiveConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted total, {term or term/part: detached value})."""
    weights = cfg.active_terms()
    if not weights:
        raise ValueError("objective.weights: every weight is 0, nothing to train")
    terms, logs = per_sample_terms(outputs, batch, cfg)
    if "contrastive" in weights:
        terms["contrastive"], pair_logs = contrastive_term(outputs, batch, cfg)
        logs.update(pair_logs)
    total = WEIGHTINGS[cfg.weighting](terms, weights, outputs)
    logs.update({name: loss.detach() for name, loss in terms.items()})
    return total, logs
