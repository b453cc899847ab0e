"""The contrastive term: CLIP's InfoNCE (Radford et al. 2021) or SigLIP's sigmoid loss (Zhai
et al. 2023) over every pair of modalities, negatives gathered from every rank (pairwise.py).

Optional Matryoshka sizes (Kusupati et al. 2022): the loss is also taken over prefixes of the
embedding, so that a served embedding truncated to one of them keeps its quality.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from polymodal.objectives.base import Term
from polymodal.sections import Float, Section

if TYPE_CHECKING:
    import torch

    from polymodal.batch import Batch, ModelOutput
    from polymodal.config import Config

NAME = "contrastive"
GUIDE = "guide"  # the guide's role among the run's reference models (train/references.py)


class ContrastiveSettings(Section):
    """The contrastive term: its loss, temperature, negatives and positives."""

    kind: Literal["infonce", "sigmoid"] = Field(
        "infonce", description="infonce (CLIP) | sigmoid (SigLIP, with a learned logit bias)."
    )
    temperature_init: Float = Field(0.07, description="The temperature the model starts from.")
    learn_temperature: bool = Field(True, description="Learn the temperature (and bias).")
    max_logit_scale: Float = Field(100.0, description="1/temperature is clamped at this.")
    bias_init: Float = Field(-10.0, description="sigmoid only: SigLIP's logit bias at start.")
    gather: Literal["local", "full", "none"] = Field(
        "local",
        description="Negatives from every rank: local (this rank's rows against all; exact "
        "gradients at 1/W of the memory) | full (every rank scores every row) | none (in-batch "
        "negatives of this rank only). See objectives.pairwise.info_nce.",
    )
    chunk_size: int = Field(
        4096, ge=1, description="sigmoid only: columns per recomputed block (bounds memory)."
    )
    positives: Literal["diagonal", "label", "text"] = Field(
        "diagonal",
        description="Which other rows count as positives: diagonal (the row's own pair only) | "
        "label (rows of the same label) | text (rows with the same text).",
    )
    pair_weights: dict[str, Float] = Field(
        default_factory=dict,
        description='Weight per modality pair, e.g. {"image-text": 1.0}; pairs not named '
        "weigh 1.0.",
    )
    guide: str = Field(
        "",
        description="A guide checkpoint or run directory (GISTEmbed): in-batch and explicit "
        "negatives that it "
        "scores above the row's own pair minus guide_margin are masked out, being likely "
        "false negatives (same captions, near-identical items). Frozen; it embeds every "
        "train and val row once, with its own preprocessing, before training. Empty: off.",
    )
    guide_margin: Float = Field(
        0.0,
        description="Absolute margin of the guide: a candidate stays a negative only while "
        "its guide score is below the row's own pair's score minus this.",
    )
    matryoshka_dims: list[int] = Field(
        default_factory=list,
        description="Matryoshka sizes: the loss is also taken over these prefixes of the "
        "embedding (each renormalised) and averaged with the full size's, so that a served "
        "embedding truncated to one of them (`dimensions`) keeps its quality. Empty: off.",
    )


def keys(batch: Batch, positives: str) -> torch.Tensor | None:
    """Row keys whose equality makes two rows positives (None: only the diagonal)."""
    return {"diagonal": None, "label": batch.label, "text": batch.hashes.get("text")}[positives]


def loss(
    outputs: ModelOutput, batch: Batch, c: ContrastiveSettings, counts: Any = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss over every pair; with matryoshka_dims, its mean over the full embedding and
    each renormalised prefix (logged as dim<d>)."""
    import torch
    import torch.nn.functional as F

    from polymodal.batch import reference_key
    from polymodal.objectives.negatives import Negatives
    from polymodal.objectives.pairwise import multi_contrastive

    guide = None
    if c.guide and batch.reference:  # without references: evaluation outside training
        names = [*outputs.embeddings, *outputs.negatives]
        guide = {n: batch.reference[reference_key(GUIDE, n)] for n in names}

    def loss_of(embeddings: dict[str, torch.Tensor], negatives: dict[str, torch.Tensor]):
        return multi_contrastive(
            embeddings,
            outputs.logit_scale,
            kind=c.kind,
            gather=c.gather,
            pair_weights=c.pair_weights,
            present={m: batch.present[m] for m in embeddings},
            keys=keys(batch, c.positives),
            logit_bias=outputs.logit_bias,
            chunk_size=c.chunk_size,
            negatives={
                k: Negatives(n, batch.negatives_present[k] > 0) for k, n in negatives.items()
            },
            guide=guide,
            guide_margin=c.guide_margin,
        )

    total, pairs = loss_of(outputs.embeddings, outputs.negatives)
    logs = dict(pairs)
    if c.matryoshka_dims:
        losses = [total]
        for d in c.matryoshka_dims:
            prefixes = {m: F.normalize(e[:, :d], dim=-1) for m, e in outputs.embeddings.items()}
            negatives = {k: F.normalize(n[..., :d], dim=-1) for k, n in outputs.negatives.items()}
            losses.append(loss_of(prefixes, negatives)[0])
            logs[f"dim{d}"] = losses[-1].detach()
        total = torch.stack(losses).mean()
    return total, logs


def model_parts(cfg: Config, prep: Any, num_classes: int) -> dict[str, Any]:
    """The learned temperature (and SigLIP's bias); frozen when the term is off, since it
    then gets no gradient (DDP needs that)."""
    c = CONTRASTIVE.settings(cfg)
    return {
        "temperature_init": c.temperature_init,
        "learn_temperature": c.learn_temperature and CONTRASTIVE.active(cfg),
        "max_logit_scale": c.max_logit_scale,
        "logit_bias_init": c.bias_init if c.kind == "sigmoid" else None,
    }


def check(cfg: Config) -> list[str]:
    c, mods, problems = CONTRASTIVE.settings(cfg), cfg.model.modalities, []
    dims, embed_dim = c.matryoshka_dims, cfg.model.embed_dim
    if any(not 0 < d < embed_dim for d in dims) or len(set(dims)) != len(dims):
        problems.append(
            f"'objective.{NAME}.matryoshka_dims': {dims} must be distinct sizes between 0 "
            f"and model.embed_dim ({embed_dim}), which is always trained"
        )
    if c.positives == "text" and "text" not in mods:
        problems.append(f"'objective.{NAME}.positives: text' needs the text modality")
    if CONTRASTIVE.active(cfg) and len(mods) < 2:
        problems.append(f"'objective.weights.{NAME}' > 0 needs two or more modalities")
    return problems


def matryoshka_dims(cfg: Config) -> list[int]:
    """The embedding prefixes trained besides the full size (served as `dimensions`)."""
    return list(CONTRASTIVE.settings(cfg).matryoshka_dims)


CONTRASTIVE: Term[ContrastiveSettings] = Term(
    name=NAME,
    weight=1.0,
    section=ContrastiveSettings,
    scope="batch",
    loss=loss,
    logs=("{pair}", "dim{d}"),
    model_parts=model_parts,
    data_needs=lambda c: frozenset({"hashes"}) if c.positives == "text" else frozenset(),
    # The logit bias exists only for the sigmoid loss.
    identity=lambda cfg: {f"objective.{NAME}.kind": CONTRASTIVE.settings(cfg).kind},
    check=check,
    references=lambda cfg: (
        {GUIDE: (f"objective.{NAME}.guide", c.guide, list(cfg.model.modalities))}
        if (c := CONTRASTIVE.settings(cfg)).guide
        else {}
    ),
)
