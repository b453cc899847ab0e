"""Contrastive losses with negatives from every rank: CLIP's InfoNCE and SigLIP's sigmoid loss.

Both are exact across ranks: with W ranks of equal B_local, after DDP averages gradients they
give the gradients of the single-process loss over all W·B_local rows (temperature and bias
included). Rows lacking a modality drop out of that pair; `keys` make same-key rows positives;
explicit negatives (negatives.py) add columns that every row scores and none counts positive.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from polymodal.batch import direction
from polymodal.objectives.gather import check_equal_batch, gather_no_grad, gather_with_grad
from polymodal.objectives.guide import Guide, gather_all, ignored
from polymodal.objectives.layout import (  # noqa: F401 (GATHER_MODES: config's choices)
    GATHER_MODES,
    Gathered,
    guide_layout,
    pair_layout,
    spans_ranks,
)
from polymodal.objectives.negatives import Negatives, negative_columns, pack, unpack, with_negatives
from polymodal.objectives.sigmoid import sigmoid_loss

POSITIVES = ("diagonal", "label", "text")


def _soft_ce_sum(logits, pos, valid_rows, valid_cols) -> torch.Tensor:
    """Σ over valid rows of −mean_{positives j} log softmax(logits_i)_j, invalid columns out."""
    logits = logits.masked_fill(~valid_cols[None, :], torch.finfo(logits.dtype).min)
    pos = pos & valid_cols[None, :]
    logp = F.log_softmax(logits, dim=1)
    per_row = -(logp * pos).sum(1) / pos.sum(1).clamp(min=1)
    return torch.where(valid_rows, per_row, torch.zeros_like(per_row)).sum()


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor,
    gather: str = "local",
    *,
    valid: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    gathered: Gathered | None = None,
    negatives_b: Negatives | None = None,
    negatives_a: Negatives | None = None,
    guide: Guide | None = None,
) -> torch.Tensor:
    """½·(CE(a→b) + CE(b→a)), each averaged over rows, positives on the diagonal.

    a, b: this rank's L2-normalised features [B_local, D]; logit_scale: the multiplier
    (already exponentiated). gather:
      - "local": this rank's rows against all ranks' columns (B_local x B_global logits);
      - "full": the whole B_global x B_global matrix on every rank;
      - "none": negatives from the local batch only.
    valid: [B_local] rows that have both modalities; the others drop out of rows and columns.
    keys: [B_local] int64; rows with equal keys >= 0 are positives too (multi-positive).
    gathered: every rank's a, b, valid (and keys), already gathered (saves collectives).
    negatives_b: explicit negatives of modality b (negatives.Negatives: [B_local, K, D] and
    which exist): extra columns of CE(a→b) for every row of the global batch, gathered like
    the in-batch ones, never positives; absent ones drop out (none: the loss without).
    negatives_a: the same for CE(b→a). Rows' validity and the normaliser ignore them.
    guide: a frozen guide's embeddings (guide.Guide): the cells it scores within its margin
    of the row's own pair leave the softmax (GISTEmbed), explicit negatives included.
    """
    p = pair_layout(a, b, gather, valid, keys, gathered)
    pos, vr, vc = p.mask.positives(), p.mask.row_valid, p.mask.col_valid
    spans = spans_ranks(gather)
    extra_b = negative_columns(negatives_b, gathered.negatives_b if gathered else None, spans)
    extra_a = negative_columns(negatives_a, gathered.negatives_a if gathered else None, spans)
    ignore_ab = ignore_ba = None
    if guide is not None:
        ignore_ab, ignore_ba = ignored(guide, guide_layout(gather), pos)
    loss_ab = _ce_direction(logit_scale * p.rows_a, p.cols_b, pos, vr, vc, extra_b, ignore_ab)
    loss_ba = _ce_direction(logit_scale * p.rows_b, p.cols_a, pos, vr, vc, extra_a, ignore_ba)
    return 0.5 * (loss_ab + loss_ba) / p.norm.clamp(min=1e-6)  # the sum is 0 when no row is valid


def _ce_direction(rows, cols, pos, valid_rows, valid_cols, extra, ignore=None) -> torch.Tensor:
    """One direction's summed CE; rows are already scaled; `ignore`: cells left out."""
    logits = rows @ cols.t()
    if extra is not None:
        logits, pos, valid_cols = with_negatives(logits, rows, pos, valid_cols, extra)
    if ignore is not None:
        logits = logits.masked_fill(ignore, torch.finfo(logits.dtype).min)
    return _soft_ce_sum(logits, pos, valid_rows, valid_cols)


def pair_name(a: str, b: str) -> str:
    return f"{a}-{b}"


PairLoss = Callable[..., torch.Tensor]
CONTRASTIVE_KINDS: dict[str, PairLoss] = {"infonce": info_nce, "sigmoid": sigmoid_loss}


def multi_contrastive(
    embeddings: dict[str, torch.Tensor],
    logit_scale: torch.Tensor,
    kind: str = "infonce",
    gather: str = "local",
    pair_weights: dict[str, float] | None = None,
    present: dict[str, torch.Tensor] | None = None,
    keys: torch.Tensor | None = None,
    logit_bias: torch.Tensor | None = None,
    chunk_size: int = 4096,
    negatives: dict[str, Negatives] | None = None,
    guide: dict[str, torch.Tensor] | None = None,
    guide_margin: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of a pair loss over every modality pair.

    guide: a frozen guide model's embeddings by modality ([B, Dg]) and by direction of the
    explicit negatives ([B, K, Dg]; one for each direction in `negatives`), gathered in one
    more collective; see guide.Guide for guide_margin.

    negatives: explicit negatives by direction (batch.direction: "text->image" holds image
    negatives for the text rows), passed to the pair of those two modalities.
    Under torch.distributed, one collective gathers every modality's features together with
    the presence flags and the negatives (plus one for keys and one tiny batch-size check):
    per step, not per pair.
    """
    if kind not in CONTRASTIVE_KINDS:
        raise ValueError(f"contrastive kind must be one of {sorted(CONTRASTIVE_KINDS)}")
    pair_weights = pair_weights or {}
    mods = list(embeddings)
    negatives = negatives or {}
    pairs = {direction(a, b) for a in mods for b in mods if a != b}
    if unknown := sorted(set(negatives) - pairs):
        raise ValueError(f"negatives {unknown} name no pair of the modalities {mods}")
    step = None
    if spans_ranks(gather):
        step = _gather_step(embeddings, present, keys, negatives)
    guide_all = None
    if guide is not None and spans_ranks(gather):
        guide_all = dict(zip(guide, gather_all(list(guide.values()))))
    total = None
    per_pair = {}
    for a, b in itertools.combinations(mods, 2):
        name = pair_name(a, b)
        weight = pair_weights.get(name, pair_weights.get(pair_name(b, a), 1.0))
        valid = None
        if present is not None:
            valid = (present[a] > 0) & (present[b] > 0)
        gathered = None
        if step is not None:
            features_all, present_all, keys_all, negatives_all = step
            valid_all = (
                present_all[a] & present_all[b]
                if present_all is not None
                else torch.ones(
                    features_all[a].shape[0], dtype=torch.bool, device=features_all[a].device
                )
            )
            negatives_ab = negatives_all.get(direction(b, a)), negatives_all.get(direction(a, b))
            gathered = Gathered(
                features_all[a], features_all[b], valid_all, keys_all, *negatives_ab
            )
        extra: dict[str, Any] = (
            {"logit_bias": logit_bias, "chunk_size": chunk_size} if kind == "sigmoid" else {}
        )
        if guide is not None:
            extra["guide"] = _pair_guide(guide, guide_all, a, b, negatives, guide_margin)
        loss = CONTRASTIVE_KINDS[kind](
            embeddings[a],
            embeddings[b],
            logit_scale,
            gather=gather,
            valid=valid,
            keys=keys,
            gathered=gathered,
            negatives_b=negatives.get(direction(a, b)),
            negatives_a=negatives.get(direction(b, a)),
            **extra,
        )
        per_pair[name] = loss.detach()
        total = weight * loss if total is None else total + weight * loss
    assert total is not None, "a contrastive loss needs two or more modalities"
    return total, per_pair


def _gather_step(
    embeddings: dict[str, torch.Tensor],
    present: dict[str, torch.Tensor] | None,
    keys: torch.Tensor | None,
    negatives: dict[str, Negatives],
) -> tuple[
    dict[str, torch.Tensor],
    dict[str, torch.Tensor] | None,
    torch.Tensor | None,
    dict[str, Negatives],
]:
    """Every rank's features and presence flags of every modality in one collective (flags
    ride along as extra feature columns, then the negatives), keys in a second:
    (features, present, keys, negatives)."""
    mods = list(embeddings)
    check_equal_batch(embeddings[mods[0]].shape[0])
    columns = [embeddings[m] for m in mods]
    if present is not None:
        flags = torch.stack([present[m] for m in mods], 1)
        columns.append(flags.to(columns[0].dtype))
    end = sum(c.shape[1] for c in columns)  # the negatives' columns start here
    columns += [c.to(columns[0].dtype) for c in pack(negatives)]
    packed = gather_with_grad(torch.cat(columns, 1))
    features_all, offset = {}, 0
    for m in mods:
        width = embeddings[m].shape[1]
        features_all[m] = packed[:, offset : offset + width]
        offset += width
    present_all = None
    if present is not None:
        flags_all = packed[:, offset:end].detach() > 0
        present_all = {m: flags_all[:, j] for j, m in enumerate(mods)}
    keys_all = gather_no_grad(keys) if keys is not None else None
    return features_all, present_all, keys_all, unpack(packed, end, negatives)


def _pair_guide(
    guide: dict[str, torch.Tensor],
    everyone: dict[str, torch.Tensor] | None,
    a: str,
    b: str,
    negatives: dict[str, Negatives],
    margin: float,
) -> Guide:
    """The guide of pair (a, b): negatives' embeddings only for directions that have some."""

    def of(g: dict[str, torch.Tensor]) -> Guide:
        ab, ba = direction(a, b), direction(b, a)
        neg_b, neg_a = (g[k] if k in negatives else None for k in (ab, ba))
        return Guide(g[a], g[b], neg_b, neg_a, margin)

    return dataclasses.replace(of(guide), everyone=of(everyone) if everyone else None)
