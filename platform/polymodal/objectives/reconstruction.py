"""The reconstruction term (a joint autoencoder): Σ over modalities of each modality's mean error
‖x − dec(enc(x))‖², decoded from its own embedding; rows missing a modality do not count.

Each modality's error is its Modality.reconstruction_sum (polymodal.modalities): MSE per pixel,
log-mel cell or standardised feature; cross-entropy over token positions for text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from polymodal.modalities import MODALITIES
from polymodal.objectives.base import Term
from polymodal.sections import ModalitiesSettings

if TYPE_CHECKING:
    import torch

    from polymodal.batch import Batch, ModelOutput
    from polymodal.config import Config

NAME = "reconstruction"


class ReconstructionSettings(ModalitiesSettings):
    """The modalities decoded from their own embeddings (empty: every modality of the
    model); each needs a Modality.decoder."""


def reconstructed(cfg: Config) -> list[str]:
    """The modalities decoded: objective.reconstruction.modalities, or every one."""
    return list(RECONSTRUCTION.settings(cfg).modalities or cfg.model.modalities)


def mean_error(modality: str, pred, target, present, count=None) -> torch.Tensor:
    """One modality's mean error over the present rows (or real tokens) of a batch; `count`
    replaces the denominator (the gradient cache's whole-batch count)."""
    total, own = MODALITIES[modality].reconstruction_sum(pred, target, present)
    return total / (own if count is None else count).clamp(min=1)


def count(batch: Batch, section: ReconstructionSettings, modalities: list[str]) -> dict[str, Any]:
    """What each decoded modality's mean divides by, over a whole batch (gradient cache)."""
    return {
        m: MODALITIES[m].reconstruction_count(batch.inputs[m], batch.present[m])
        for m in section.modalities or modalities
    }


def loss(
    outputs: ModelOutput,
    batch: Batch,
    section: ReconstructionSettings,
    counts: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ over the decoded modalities of each one's mean error, and each one's (logged)."""
    import torch

    per_modality = {
        m: mean_error(m, pred, batch.inputs[m], batch.present[m], counts[m] if counts else None)
        for m, pred in outputs.reconstructions.items()
    }
    total = torch.stack(list(per_modality.values())).sum()
    return total, {m: v.detach() for m, v in per_modality.items()}


def model_parts(cfg: Config, prep: Any, num_classes: int) -> dict[str, Any]:
    """A decoder per reconstructed modality, from its Modality.decoder."""
    if not RECONSTRUCTION.active(cfg):
        return {}
    decoders = {}
    for m in reconstructed(cfg):
        build = MODALITIES[m].decoder
        if build is None:
            raise ValueError(f"objective.{NAME}: modality '{m}' has no decoder")
        try:
            decoders[m] = build(cfg, prep)
        except ValueError as exc:
            raise ValueError(f"objective.{NAME}: {exc}") from None
    return {"decoders": decoders}


RECONSTRUCTION: Term[ReconstructionSettings] = Term(
    name=NAME,
    weight=0.0,
    section=ReconstructionSettings,
    scope="rows",
    loss=loss,
    logs=("{m}",),
    count=count,
    model_parts=model_parts,
    modalities=reconstructed,
    # Decoders: which ones exist.
    identity=lambda cfg: {
        f"objective.weights.{NAME} > 0": RECONSTRUCTION.active(cfg),
        f"objective.{NAME}.modalities": RECONSTRUCTION.settings(cfg).modalities,
    },
)
