"""The joint objective: each configured term computed from the model outputs, then combined
by a weighting from WEIGHTINGS. Every term is returned separately for logging."""

from __future__ import annotations

from collections.abc import Callable

import torch

from polymodal.config import ObjectiveConfig
from polymodal.objectives.classification import classification_loss
from polymodal.objectives.contrastive import multi_contrastive
from polymodal.objectives.reconstruction import reconstruction_counts, reconstruction_loss

TERMS = ("contrastive", "reconstruction", "classification")


def static_weighting(
    terms: dict[str, torch.Tensor], weights: dict[str, float], outputs: dict
) -> torch.Tensor:
    return torch.stack([weights[name] * loss for name, loss in terms.items()]).sum()


def uncertainty_weighting(
    terms: dict[str, torch.Tensor], weights: dict[str, float], outputs: dict
) -> torch.Tensor:
    """Kendall et al. 2018: sum of 1/2 (exp(-s_i) L_i + s_i), s_i learned per term. The
    configured weights only choose the terms (> 0); their sizes are learned."""
    log_vars = outputs["loss_log_vars"]
    return torch.stack(
        [0.5 * (torch.exp(-log_vars[name]) * loss + log_vars[name]) for name, loss in terms.items()]
    ).sum()


WEIGHTINGS: dict[str, Callable[[dict[str, torch.Tensor], dict[str, float], dict], torch.Tensor]] = {
    "static": static_weighting,
    "uncertainty": uncertainty_weighting,
}


def active_terms(cfg: ObjectiveConfig) -> dict[str, float]:
    weights = {t: getattr(cfg.weights, t) for t in TERMS}
    return {t: w for t, w in weights.items() if w > 0}


def contrastive_keys(batch: dict[str, torch.Tensor], positives: str) -> torch.Tensor | None:
    """Row keys whose equality makes two rows positives (None: only the diagonal)."""
    return {"diagonal": None, "label": batch.get("label"), "text": batch.get("text_hash")}[
        positives
    ]


def contrastive_term(
    outputs: dict, batch: dict[str, torch.Tensor], cfg: ObjectiveConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    c = cfg.contrastive
    loss, pairs = multi_contrastive(
        outputs["embeddings"],
        outputs["logit_scale"],
        kind=c.kind,
        gather=c.gather,
        pair_weights=c.pair_weights,
        present={m: batch[f"{m}_present"] for m in outputs["embeddings"]},
        keys=contrastive_keys(batch, c.positives),
        logit_bias=outputs.get("logit_bias"),
        chunk_size=c.chunk_size,
    )
    return loss, {f"contrastive/{p}": v for p, v in pairs.items()}


def per_sample_terms(
    outputs: dict,
    batch: dict[str, torch.Tensor],
    cfg: ObjectiveConfig,
    counts: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Reconstruction and classification; `counts` (from batch_counts) fixes denominators."""
    weights = active_terms(cfg)
    terms: dict[str, torch.Tensor] = {}
    logs: dict[str, torch.Tensor] = {}
    if "reconstruction" in weights:
        terms["reconstruction"], parts = reconstruction_loss(
            outputs["reconstructions"], batch, counts["reconstruction"] if counts else None
        )
        logs.update({f"reconstruction/{m}": v for m, v in parts.items()})
    if "classification" in weights:
        terms["classification"] = classification_loss(
            outputs["class_logits"], batch["label"], counts["classification"] if counts else None
        )
    return terms, logs


def batch_counts(batch: dict[str, torch.Tensor], reconstructed: list[str]) -> dict:
    """Denominators of the per-sample terms over a whole batch, before it is split up."""
    return {
        "reconstruction": reconstruction_counts(batch, reconstructed),
        "classification": batch["label"].ge(0).sum(),
    }


def joint_loss(
    outputs: dict, batch: dict[str, torch.Tensor], cfg: ObjectiveConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted total, {term or term/part: detached value})."""
    weights = active_terms(cfg)
    if not weights:
        raise ValueError("objective.weights: every weight is 0, nothing to train")
    terms, logs = per_sample_terms(outputs, batch, cfg)
    if "contrastive" in weights:
        terms["contrastive"], pair_logs = contrastive_term(outputs, batch, cfg)
        logs.update(pair_logs)
    total = WEIGHTINGS[cfg.weighting](terms, weights, outputs)
    logs.update({name: loss.detach() for name, loss in terms.items()})
    return total, logs
