"""The distill term: a frozen teacher checkpoint's similarity distributions taught to the
student, KL(teacher ‖ student) over each row's scores against the global batch, per pair.

OpenCLIP's --distill-model formulation (both directions of each modality pair), with one
temperature for both models, so that the student may have other towers and another width.
The teacher's embeddings come from train/references.py (Batch.reference, role "teacher").
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from pydantic import Field

from polymodal.objectives.base import Term
from polymodal.sections import Float, Section

if TYPE_CHECKING:
    import torch

    from polymodal.batch import Batch, ModelOutput
    from polymodal.config import Config

NAME = "distill"
ROLE = "teacher"


class DistillSettings(Section):
    """Distillation from a frozen teacher checkpoint."""

    teacher: str = Field(
        "",
        description="The teacher: a checkpoint directory (polymodal.json beside its weights) "
        "or a run directory (its newest checkpoint), local or s3://. It embeds every train "
        "and val row once, with its own preprocessing, before training starts.",
    )
    temperature: Float = Field(
        0.05, gt=0, description="Both models' similarities are divided by it before softmax."
    )
    modalities: list[str] = Field(
        default_factory=list,
        description="The modalities whose pairs are distilled (each must be the student's and "
        "the teacher's); empty: every modality of the student.",
    )


def distilled(cfg: Config) -> list[str]:
    return list(DISTILL.settings(cfg).modalities or cfg.model.modalities)


def pair_kl(
    s_a: torch.Tensor,
    s_b: torch.Tensor,
    t_a: torch.Tensor,
    t_b: torch.Tensor,
    valid: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """½ Σ over a→b and b→a of the mean over valid rows of KL(softmax(t/τ) ‖ softmax(s/τ)),
    each row of this rank scored against every rank's valid rows (gathered like the
    contrastive term's "local" mode: exact across ranks once DDP averages)."""
    import torch
    import torch.nn.functional as F

    from polymodal.objectives.gather import (
        check_equal_batch,
        gather_no_grad,
        gather_with_grad,
        world,
    )

    _, world_size = world()
    check_equal_batch(s_a.shape[0])
    cols_valid = gather_no_grad(valid)
    total = s_a.new_zeros(())
    for rows_s, cols_s, rows_t, cols_t in (
        (s_a, gather_with_grad(s_b), t_a, gather_no_grad(t_b)),
        (s_b, gather_with_grad(s_a), t_b, gather_no_grad(t_a)),
    ):
        lowest = torch.finfo(rows_s.dtype).min
        student = (rows_s @ cols_s.t() / temperature).masked_fill(~cols_valid[None], lowest)
        teacher = (rows_t @ cols_t.t() / temperature).masked_fill(~cols_valid[None], lowest)
        log_t = F.log_softmax(teacher.to(rows_s.dtype), dim=1)
        kl = log_t.exp() * (log_t - F.log_softmax(student, dim=1))
        kl = kl.masked_fill(~cols_valid[None], 0)
        total = total + torch.where(valid, kl.sum(1), torch.zeros_like(kl[:, 0])).sum()
    norm = cols_valid.sum().to(total.dtype) / world_size
    return 0.5 * total / norm.clamp(min=1e-6)


def loss(
    outputs: ModelOutput, batch: Batch, c: DistillSettings, counts: Any = None
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """The mean over pairs of pair_kl (logged per pair); None on a batch without reference
    embeddings at all (`polymodal eval`, outside training: no teacher to compare with)."""
    import torch

    from polymodal.batch import reference_key

    if not batch.reference:
        return None, {}
    mods = [m for m in outputs.embeddings if reference_key(ROLE, m) in batch.reference]
    mods = [m for m in mods if not c.modalities or m in c.modalities]
    losses, logs = [], {}
    for a, b in itertools.combinations(mods, 2):
        ta, tb = (batch.reference[reference_key(ROLE, m)] for m in (a, b))
        valid = (batch.present[a] > 0) & (batch.present[b] > 0)
        valid &= batch.reference_present[reference_key(ROLE, a)]
        valid &= batch.reference_present[reference_key(ROLE, b)]
        sa, sb = outputs.embeddings[a], outputs.embeddings[b]
        losses.append(pair_kl(sa, sb, ta.to(sa.dtype), tb.to(sb.dtype), valid, c.temperature))
        logs[f"{a}-{b}"] = losses[-1].detach()
    if not losses:
        raise ValueError(f"objective.{NAME}: the batch carries no teacher embeddings")
    return torch.stack(losses).mean(), logs


def check(cfg: Config) -> list[str]:
    if not DISTILL.active(cfg):
        return []
    c, problems = DISTILL.settings(cfg), []
    if not c.teacher:
        problems.append(f"'objective.{NAME}.teacher': objective.weights.{NAME} > 0 needs one")
    if unknown := [m for m in c.modalities if m not in cfg.model.modalities]:
        problems.append(f"'objective.{NAME}.modalities': {unknown} are not model.modalities")
    if len(distilled(cfg)) < 2:
        problems.append(f"'objective.{NAME}.modalities': distilling needs two or more")
    return problems


DISTILL: Term[DistillSettings] = Term(
    name=NAME,
    weight=0.0,
    section=DistillSettings,
    scope="batch",
    loss=loss,
    logs=("{pair}",),
    modalities=distilled,
    check=check,
    references=lambda cfg: {
        ROLE: (f"objective.{NAME}.teacher", DISTILL.settings(cfg).teacher, distilled(cfg))
    },
)
