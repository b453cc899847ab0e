"""The joint objective: each configured term computed from the model outputs, then combined
by a weighting from WEIGHTINGS. Every term is returned separately for logging."""

from __future__ import annotations

from collections.abc import Callable

import torch

from polymodal.config import ObjectiveConfig
from polymodal.objectives.classification import classification_loss
from polymodal.objectives.contrastive import multi_info_nce
from polymodal.objectives.reconstruction import reconstruction_loss

TERMS = ("contrastive", "reconstruction", "classification")


def static_weighting(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    return torch.stack([weights[name] * loss for name, loss in terms.items()]).sum()


WEIGHTINGS: dict[str, Callable[[dict[str, torch.Tensor], dict[str, float]], torch.Tensor]] = {
    "static": static_weighting,
}


def active_terms(cfg: ObjectiveConfig) -> dict[str, float]:
    weights = {t: getattr(cfg.weights, t) for t in TERMS}
    return {t: w for t, w in weights.items() if w > 0}


def joint_loss(
    outputs: dict, batch: dict[str, torch.Tensor], cfg: ObjectiveConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted total, {term or term/part: detached value})."""
    weights = active_terms(cfg)
    if cfg.weighting not in WEIGHTINGS:
        raise ValueError(f"objective.weighting: unknown '{cfg.weighting}' ({sorted(WEIGHTINGS)})")
    terms: dict[str, torch.Tensor] = {}
    logs: dict[str, torch.Tensor] = {}
    if "contrastive" in weights:
        c = cfg.contrastive
        terms["contrastive"], pairs = multi_info_nce(
            outputs["embeddings"], outputs["logit_scale"], c.gather, c.pair_weights
        )
        logs.update({f"contrastive/{p}": v for p, v in pairs.items()})
    if "reconstruction" in weights:
        terms["reconstruction"], parts = reconstruction_loss(outputs["reconstructions"], batch)
        logs.update({f"reconstruction/{m}": v for m, v in parts.items()})
    if "classification" in weights:
        terms["classification"] = classification_loss(outputs["class_logits"], batch["label"])
    if not terms:
        raise ValueError("objective.weights: every weight is 0, nothing to train")
    total = WEIGHTINGS[cfg.weighting](terms, weights)
    logs.update({name: loss.detach() for name, loss in terms.items()})
    return total, logs
