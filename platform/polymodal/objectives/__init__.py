"""The objective-term registry: TERMS maps each name to its Term (one file each: contrastive,
reconstruction, classification, distill, fusion), in the order their weights are listed. No torch
at import."""

from __future__ import annotations

from typing import Any

from polymodal.objectives.base import Term
from polymodal.objectives.classification import CLASSIFICATION
from polymodal.objectives.contrastive import CONTRASTIVE
from polymodal.objectives.distill import DISTILL
from polymodal.objectives.fusion import FUSION
from polymodal.objectives.reconstruction import RECONSTRUCTION

TERMS: dict[str, Term[Any]] = {
    t.name: t for t in (CONTRASTIVE, RECONSTRUCTION, CLASSIFICATION, DISTILL, FUSION)
}


def register(term: Term[Any]) -> None:
    """Add an objective term (or replace one of the same name); see docs/architecture.md."""
    TERMS[term.name] = term


def active_terms(cfg: Any) -> dict[str, Term[Any]]:
    """The terms cfg trains (weight > 0), in registry order."""
    return {name: t for name, t in TERMS.items() if t.active(cfg)}
