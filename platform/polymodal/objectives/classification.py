"""The classification term: cross-entropy of a classifier head over the mean of the rows'
normalised embeddings (of the modalities each row has); rows without a label (-1) are ignored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from polymodal.objectives.base import Term
from polymodal.sections import ModalitiesSettings

if TYPE_CHECKING:
    import torch

    from polymodal.batch import Batch, ModelOutput
    from polymodal.config import Config

NAME = "classification"


def classification_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    count: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over `rows` (default: the labelled ones); `count` overrides the denominator (for
    the gradient cache).

    An unlabelled batch gives 0 while keeping the graph (DDP needs every parameter used).
    """
    import torch.nn.functional as F

    rows = labels.ge(0) if rows is None else rows
    total = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    total = (total * rows).sum()
    denom = rows.sum() if count is None else count
    return total / denom.clamp(min=1)


def classified(
    labels: torch.Tensor,
    present: dict[str, torch.Tensor],
    modalities: list[str],
    every: bool = False,
) -> torch.Tensor:
    """Rows with a label and one of the classified modalities (every one of them, for a head
    that reads them together): a source that lacks them (data.sources) gives the head nothing
    to read, so nothing to learn from."""
    import torch

    held = torch.stack([present[m] > 0 for m in modalities])
    return labels.ge(0) & (held.all(dim=0) if every else held.any(dim=0))


def loss(
    outputs: ModelOutput, batch: Batch, section: ModalitiesSettings, counts: Any = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    # An active classification term gives the model its head (model_parts).
    assert outputs.class_logits is not None, "the model has no classifier head"
    rows = classified(batch.label, outputs.present, section.modalities or list(outputs.present))
    return classification_loss(outputs.class_logits, batch.label, counts, rows), {}


def model_parts(cfg: Config, prep: Any, num_classes: int) -> dict[str, Any]:
    """The classifier head over the fused embedding of objective.classification.modalities."""
    if not CLASSIFICATION.active(cfg):
        return {}
    return {
        "num_classes": num_classes,
        "classifier_hidden": cfg.model.classifier_hidden,
        "classify_modalities": CLASSIFICATION.settings(cfg).modalities or None,
    }


class ClassificationSettings(ModalitiesSettings):
    """Modalities fused for the classifier head; leave out one that carries the label itself
    (empty: every modality of the model)."""


CLASSIFICATION: Term[ClassificationSettings] = Term(
    name=NAME,
    weight=0.0,
    section=ClassificationSettings,
    scope="rows",
    loss=loss,
    count=lambda batch, section, modalities: classified(
        batch.label, batch.present, section.modalities or modalities
    ).sum(),
    model_parts=model_parts,
    data_needs=lambda section: frozenset({"labels"}),
    modalities=lambda cfg: list(CLASSIFICATION.settings(cfg).modalities or cfg.model.modalities),
    # The classifier head: whether it exists, and what it reads.
    identity=lambda cfg: {
        f"objective.weights.{NAME} > 0": CLASSIFICATION.active(cfg),
        f"objective.{NAME}.modalities": CLASSIFICATION.settings(cfg).modalities,
    },
)
