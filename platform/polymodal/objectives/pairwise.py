"""Contrastive losses with negatives from every rank: CLIP's InfoNCE and SigLIP's sigmoid loss.

Both are exact across ranks: with W ranks of equal B_local, after DDP averages gradients they
give the gradients of the single-process loss over all W·B_local rows (temperature and bias
included). Rows lacking a modality drop out of that pair; `keys` make same-key rows positives;
explicit negatives (negatives.py) add columns that every row scores and none counts positive.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from polymodal.batch import direction
from polymodal.objectives.gather import check_equal_batch, gather_no_grad, gather_with_grad, world
from polymodal.objectives.negatives import Negatives, negative_columns, pack, unpack, with_negatives

GATHER_MODES = ("local", "full", "none")
POSITIVES = ("diagonal", "label", "text")


def positive_mask(
    row_ids: torch.Tensor,
    col_ids: torch.Tensor,
    row_keys: torch.Tensor | None = None,
    col_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """[R, C] bool: the same sample, or the same key (keys < 0 match nothing but themselves)."""
    pos = row_ids[:, None] == col_ids[None, :]
    if row_keys is not None:
        assert col_keys is not None, "keys for the rows and the columns, or for neither"
        pos = pos | ((row_keys[:, None] == col_keys[None, :]) & (row_keys[:, None] >= 0))
    return pos


@dataclass(frozen=True)
class Gathered:
    """Every rank's rows of one pair (rank order), gathered once per step by multi_contrastive:
    features a, b [B_global, D] with gradients back to their owners, which rows have both
    modalities, the keys (None without keys) and the explicit negatives of either modality."""

    a: torch.Tensor
    b: torch.Tensor
    valid: torch.Tensor
    keys: torch.Tensor | None = None
    negatives_a: Negatives | None = None
    negatives_b: Negatives | None = None


@dataclass(frozen=True)
class PairMask:
    """Which cells of one pair's logits count and which are positives: the rows' and columns'
    global ids (same id: same sample), validity (both modalities present) and keys."""

    row_ids: torch.Tensor
    col_ids: torch.Tensor
    row_valid: torch.Tensor
    col_valid: torch.Tensor
    row_keys: torch.Tensor | None = None
    col_keys: torch.Tensor | None = None

    def positives(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """[rows, columns start:end] bool, see positive_mask."""
        cols = slice(start, end)
        col_keys = None if self.col_keys is None else self.col_keys[cols]
        return positive_mask(self.row_ids, self.col_ids[cols], self.row_keys, col_keys)


@dataclass(frozen=True)
class PairLayout:
    """One pair under a gather mode: the rows this rank scores against the columns (features of
    both modalities), their mask, and what the summed loss divides by.

    The normaliser makes the per-rank losses average (over ranks, as DDP does) to the mean over
    every valid row of the global batch: valid_global / W for "local", valid_global for "full".
    """

    rows_a: torch.Tensor
    rows_b: torch.Tensor
    cols_a: torch.Tensor
    cols_b: torch.Tensor
    mask: PairMask
    norm: torch.Tensor


def _span(gather: str, batch: int, device: torch.device):
    """(world size the loss spans, global ids of this rank's rows, whether rows are all ranks')."""
    if gather not in GATHER_MODES:
        raise ValueError(f"gather must be one of {GATHER_MODES}, got {gather!r}")
    rank, world_size = world()
    if gather == "none" or world_size == 1:
        return 1, torch.arange(batch, device=device), False
    if gather == "full":
        return world_size, torch.arange(batch * world_size, device=device), True
    return world_size, torch.arange(batch, device=device) + rank * batch, False


def _spans_ranks(gather: str) -> bool:
    return gather != "none" and world()[1] > 1


def _gather_pair(a, b, valid, keys) -> Gathered:
    check_equal_batch(a.shape[0])
    a_all, b_all, valid_all = gather_with_grad(a), gather_with_grad(b), gather_no_grad(valid)
    return Gathered(a_all, b_all, valid_all, gather_no_grad(keys) if keys is not None else None)


def pair_layout(
    a: torch.Tensor,
    b: torch.Tensor,
    gather: str,
    valid: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    gathered: Gathered | None = None,
) -> PairLayout:
    """Lay out one pair under a gather mode, gathering whatever `gathered` does not bring."""
    n = a.shape[0]
    valid = torch.ones(n, dtype=torch.bool, device=a.device) if valid is None else valid.bool()
    world_size, row_ids, full = _span(gather, n, a.device)
    if world_size == 1:
        mask = PairMask(row_ids, row_ids, valid, valid, keys, keys)
        return PairLayout(a, b, a, b, mask, valid.sum())
    g = _gather_pair(a, b, valid, keys) if gathered is None else gathered
    if keys is not None and g.keys is None:
        raise ValueError("keys were given but the gathered rows have none")
    valid_all = g.valid.bool()
    col_ids = torch.arange(g.a.shape[0], device=a.device)
    if full:
        mask = PairMask(col_ids, col_ids, valid_all, valid_all, g.keys, g.keys)
        return PairLayout(g.a, g.b, g.a, g.b, mask, valid_all.sum())
    mask = PairMask(row_ids, col_ids, valid, valid_all, keys, g.keys)
    # In float64 too, not the default float32: count / 3 is inexact in either, 1e-8 apart.
    count = valid_all.sum().to(torch.promote_types(a.dtype, torch.float32))
    return PairLayout(a, b, g.a, g.b, mask, count / world_size)


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
    """
    p = pair_layout(a, b, gather, valid, keys, gathered)
    pos, vr, vc = p.mask.positives(), p.mask.row_valid, p.mask.col_valid
    spans = _spans_ranks(gather)
    extra_b = negative_columns(negatives_b, gathered.negatives_b if gathered else None, spans)
    extra_a = negative_columns(negatives_a, gathered.negatives_a if gathered else None, spans)
    loss_ab = _ce_direction(logit_scale * p.rows_a, p.cols_b, pos, vr, vc, extra_b)
    loss_ba = _ce_direction(logit_scale * p.rows_b, p.cols_a, pos, vr, vc, extra_a)
    return 0.5 * (loss_ab + loss_ba) / p.norm.clamp(min=1e-6)  # the sum is 0 when no row is valid


def _ce_direction(rows, cols, pos, valid_rows, valid_cols, extra) -> torch.Tensor:
    """One direction's summed CE; rows are already scaled."""
    logits = rows @ cols.t()
    if extra is not None:
        logits, pos, valid_cols = with_negatives(logits, rows, pos, valid_cols, extra)
    return _soft_ce_sum(logits, pos, valid_rows, valid_cols)


class _ChunkedSigmoid(torch.autograd.Function):
    """Σ over valid pairs of −log σ(z·(s·a_i·b_j + bias)), z = +1 for positives, −1 otherwise.

    Column chunks are computed in forward and recomputed in backward: nothing of size
    rows x columns is kept, so memory is O(rows x chunk) however many ranks there are.
    """

    @staticmethod
    def forward(ctx, rows, cols, scale, bias, mask: PairMask, chunk: int):
        ctx.save_for_backward(rows, cols, scale, bias)
        ctx.mask, ctx.chunk = mask, chunk  # ids, flags and keys: no gradient, never changed
        total = rows.new_zeros(())
        for start in range(0, cols.shape[0], chunk):
            z, w, logits = _sigmoid_chunk(rows, cols, scale, bias, mask, start, chunk)
            total = total - (F.logsigmoid(z * logits) * w).sum()
        return total

    @staticmethod
    def backward(ctx, grad_out):
        rows, cols, scale, bias = ctx.saved_tensors
        mask, chunk = ctx.mask, ctx.chunk
        grad_rows = torch.zeros_like(rows)
        grad_cols = torch.zeros_like(cols)
        grad_scale = torch.zeros_like(scale)
        grad_bias = torch.zeros_like(bias)
        for start in range(0, cols.shape[0], chunk):
            z, w, logits = _sigmoid_chunk(rows, cols, scale, bias, mask, start, chunk)
            # d/dl of −log σ(z·l) = −z·σ(−z·l)
            dl = -z * torch.sigmoid(-z * logits) * w * grad_out
            block = cols[start : start + chunk]
            grad_rows += scale * dl @ block
            grad_cols[start : start + chunk] = scale * dl.t() @ rows
            grad_scale += (dl * (rows @ block.t())).sum()
            grad_bias += dl.sum()
        return grad_rows, grad_cols, grad_scale, grad_bias, None, None


def _sigmoid_chunk(rows, cols, scale, bias, mask: PairMask, start: int, chunk: int):
    end = start + chunk
    z = mask.positives(start, end).to(rows.dtype) * 2 - 1
    w = (mask.row_valid[:, None] & mask.col_valid[None, start:end]).to(rows.dtype)
    logits = scale * rows @ cols[start:end].t() + bias
    return z, w, logits


def sigmoid_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    gather: str = "local",
    *,
    valid: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    gathered: Gathered | None = None,
    chunk_size: int = 4096,
    negatives_b: Negatives | None = None,
    negatives_a: Negatives | None = None,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss, summed over columns and averaged over rows.

    Same arguments as info_nce plus the learnable logit_bias; computed in column chunks of
    chunk_size that are recomputed in backward. Explicit negatives are extra columns with
    z = −1 for every valid row: negatives_b (every rank's, as info_nce's) against the a
    rows, negatives_a against the b rows, each in chunks of their own.
    """
    p = pair_layout(a, b, gather, valid, keys, gathered)
    chunk = max(int(chunk_size), 1)
    total = _sigmoid_sum(p.rows_a, p.cols_b, logit_scale, logit_bias, p.mask, chunk)
    spans = _spans_ranks(gather)
    for rows, negatives, got in (
        (p.rows_a, negatives_b, gathered.negatives_b if gathered else None),
        (p.rows_b, negatives_a, gathered.negatives_a if gathered else None),
    ):
        extra = negative_columns(negatives, got, spans)
        if extra is not None:
            # Column ids -1 and no keys: no row's id matches, so every z is −1.
            ids = torch.full_like(extra[1], -1, dtype=torch.long)
            mask = PairMask(p.mask.row_ids, ids, p.mask.row_valid, extra[1])
            total = total + _sigmoid_sum(rows, extra[0], logit_scale, logit_bias, mask, chunk)
    return total / p.norm.clamp(min=1e-6)  # the sum is 0 when no row is valid


def _sigmoid_sum(rows, cols, scale, bias, mask: PairMask, chunk: int) -> torch.Tensor:
    if rows.dtype in (torch.float16, torch.bfloat16):  # the pairwise sums stay in float32
        rows, cols = rows.float(), cols.float()
    return _ChunkedSigmoid.apply(rows, cols, scale.to(rows.dtype), bias.to(rows.dtype), mask, chunk)


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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of a pair loss over every modality pair.

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
    if _spans_ranks(gather):
        step = _gather_step(embeddings, present, keys, negatives)
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
        extra = {"logit_bias": logit_bias, "chunk_size": chunk_size} if kind == "sigmoid" else {}
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
