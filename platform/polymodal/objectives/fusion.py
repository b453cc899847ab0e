"""The fusion term: cross-entropy of the fusion head's answers (towers/fusion.py), where one
modality's tokens attend to the others' (a question to an image's patches); rows without a
label, or without every fused modality, are ignored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from polymodal.objectives.base import Term
from polymodal.objectives.classification import classification_loss, classified
from polymodal.sections import Section

if TYPE_CHECKING:
    import torch

    from polymodal.batch import Batch, ModelOutput
    from polymodal.config import Config

NAME = "fusion"
# The towers whose token sequences the head reads (a `tokens` and a `pool` method each), by
# modality: pretrained text towers (minilm, hf) too, locked or not.
SEQUENCE_ENCODERS = {
    "image": {"small_cnn"},
    "text": {"byte_transformer", "minilm", "hf"},
    "audio": {"mel_cnn"},
    "vector": {"mlp"},
}


class FusionSettings(Section):
    """A small transformer over the towers' token sequences: the query modality's tokens and a
    [CLS] token attend to each other and to the other modalities' tokens (cross-attention);
    [CLS] is classified over the dataset's labels (a VQA answer vocabulary)."""

    modalities: list[str] = Field(
        default_factory=lambda: ["image", "text"],
        description="The fused modalities; one alone is a baseline (it attends to itself).",
    )
    query: str = Field("text", description="The modality whose tokens ask (one of modalities).")
    width: int = Field(128, ge=8, description="The head's width.")
    layers: int = Field(2, ge=1, description="Its cross-attention layers.")
    heads: int = Field(4, ge=1, description="Attention heads; they divide width.")
    patch_pool: int = Field(
        1,
        ge=1,
        description="A grid of patches (an image's or a spectrogram's CNN feature map) is "
        "average-pooled by this factor first: fewer, larger patches, less attention (a 48 px "
        "image's 12 x 12 become 3 x 3 at 4).",
    )


def loss(
    outputs: ModelOutput, batch: Batch, section: FusionSettings, counts: Any = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    assert outputs.fusion_logits is not None, "the model has no fusion head"
    rows = classified(batch.label, outputs.present, section.modalities, every=True)
    value = classification_loss(outputs.fusion_logits, batch.label, counts, rows)
    # Trained alone, the head reads no embedding: their projections stay in the graph at
    # zero weight, as DDP needs every parameter used.
    return value + 0.0 * sum(e.sum() for e in outputs.embeddings.values()), {}


def model_parts(cfg: Config, prep: Any, num_classes: int) -> dict[str, Any]:
    if not FUSION.active(cfg):
        return {}
    s = FUSION.settings(cfg)
    return {
        "fusion": {
            "modalities": list(s.modalities),
            "query": s.query,
            "num_answers": num_classes,
            "width": s.width,
            "layers": s.layers,
            "heads": s.heads,
            "patch_pool": s.patch_pool,
        }
    }


def check(cfg: Config) -> list[str]:
    if not FUSION.active(cfg):
        return []
    s, key, problems = FUSION.settings(cfg), f"'objective.{NAME}", []
    mods = cfg.model.modalities
    problems += [f"{key}.modalities': '{m}' is not in model.modalities {mods}" for m in s.modalities
                 if m not in mods]  # fmt: skip
    if s.query not in s.modalities:
        problems.append(f"{key}.query': '{s.query}' is not one of its modalities {s.modalities}")
    if s.width % s.heads:
        problems.append(f"{key}.heads': {s.heads} does not divide width {s.width}")
    for m in (m for m in s.modalities if m in mods):
        encoder = cfg.model.section(m).encoder
        if encoder not in SEQUENCE_ENCODERS.get(m, ()):
            problems.append(
                f"'model.{m}.encoder': {encoder} gives no token sequence for objective.{NAME} "
                f"(one of {sorted(SEQUENCE_ENCODERS.get(m, ()))})"
            )
        if cfg.model.tuning(m) == "freeze" and cfg.train.cache_frozen_features:
            problems.append(
                f"'model.{m}.tuning: freeze' caches pooled features, not the tokens "
                f"objective.{NAME} reads: set train.cache_frozen_features: false"
            )
    if cfg.train.grad_cache.chunk_size > 0:
        problems.append(f"{key}' does not run under train.grad_cache yet: use one or the other")
    return problems


FUSION: Term[FusionSettings] = Term(
    name=NAME,
    weight=0.0,
    section=FusionSettings,
    scope="rows",
    loss=loss,
    count=lambda batch, section, modalities: classified(
        batch.label, batch.present, section.modalities, every=True
    ).sum(),
    model_parts=model_parts,
    data_needs=lambda section: frozenset({"labels"}),
    modalities=lambda cfg: list(FUSION.settings(cfg).modalities),
    identity=lambda cfg: {
        f"objective.weights.{NAME} > 0": FUSION.active(cfg),
        f"objective.{NAME}": FUSION.settings(cfg).model_dump(),
    },
    check=check,
)
