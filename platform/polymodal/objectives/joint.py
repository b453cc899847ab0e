"""The joint objective: each active term (objectives.TERMS) computed from the model outputs,
then combined by a weighting from WEIGHTINGS. Every term is returned separately for logging."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from polymodal.batch import Batch, ModelOutput
from polymodal.objectives import active_terms

if TYPE_CHECKING:
    from polymodal.config import Config


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

Logs = dict[str, torch.Tensor]


def term_losses(
    outputs: ModelOutput,
    batch: Batch,
    cfg: Config,
    scope: str | None = None,
    counts: dict[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], Logs]:
    """({term: loss}, {term/log: value}) of the active terms (of one scope when given);
    `counts` (from batch_counts) fixes the rows terms' denominators."""
    terms: dict[str, torch.Tensor] = {}
    logs: Logs = {}
    for name, term in active_terms(cfg).items():
        if scope is not None and term.scope != scope:
            continue
        count = counts[name] if counts is not None else None
        loss, parts = term.loss(outputs, batch, term.settings(cfg), count)
        if loss is None:  # not measurable on this batch (distill outside training)
            continue
        terms[name] = loss
        logs.update({f"{name}/{part}": value for part, value in parts.items()})
    return terms, logs


def batch_counts(batch: Batch, cfg: Config) -> dict[str, Any]:
    """Denominators of the active rows terms over a whole batch, before it is split up."""
    return {
        name: term.count(batch, term.settings(cfg), list(cfg.model.modalities))
        for name, term in active_terms(cfg).items()
        if term.count is not None
    }


def joint_loss(outputs: ModelOutput, batch: Batch, cfg: Config) -> tuple[torch.Tensor, Logs]:
    """(weighted total, {term or term/part: detached value})."""
    weights = {name: term.weight_of(cfg) for name, term in active_terms(cfg).items()}
    if not weights:
        raise ValueError("objective.weights: every weight is 0, nothing to train")
    terms, logs = term_losses(outputs, batch, cfg)
    total = WEIGHTINGS[cfg.objective.weighting](terms, weights, outputs)
    logs.update({name: loss.detach() for name, loss in terms.items()})
    return total, logs
