"""Contrastive losses with negatives from every rank: CLIP's InfoNCE and SigLIP's sigmoid loss.

Both are exact across ranks: with W ranks of equal B_local, after DDP averages gradients they
give the gradients of the single-process loss over all W·B_local rows (temperature and bias
included). Rows lacking a modality drop out of that pair; `keys` make same-key rows positives.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from polymodal.objectives.gather import check_equal_batch, gather_no_grad, gather_with_grad, world

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
        pos = pos | ((row_keys[:, None] == col_keys[None, :]) & (row_keys[:, None] >= 0))
    return pos


def _layout(gather: str, batch: int, device: torch.device):
    """(world size the loss spans, global ids of this rank's rows, whether rows are all ranks')."""
    if gather not in GATHER_MODES:
        raise ValueError(f"gather must be one of {GATHER_MODES}, got {gather!r}")
    rank, world_size = world()
    if gather == "none" or world_size == 1:
        return 1, torch.arange(batch, device=device), False
    if gather == "full":
        return world_size, torch.arange(batch * world_size, device=device), True
    return world_size, torch.arange(batch, device=device) + rank * batch, False


def _prepare(a, b, gather, a_all, b_all, valid, keys, valid_all=None, keys_all=None):
    """Rows, columns, ids, validity, keys and the normaliser for one pair under a gather mode.

    The normaliser makes the per-rank losses average (over ranks, as DDP does) to the mean over
    every valid row of the global batch: valid_global / W for "local", valid_global for "full".
    """
    n = a.shape[0]
    valid = torch.ones(n, dtype=torch.bool, device=a.device) if valid is None else valid.bool()
    world_size, row_ids, full = _layout(gather, n, a.device)
    if world_size == 1:
        return a, b, a, b, row_ids, row_ids, valid, valid, keys, keys, valid.sum()
    if a_all is None or b_all is None:  # multi_contrastive checks once per step
        check_equal_batch(n)
    a_all = gather_with_grad(a) if a_all is None else a_all
    b_all = gather_with_grad(b) if b_all is None else b_all
    valid_all = gather_no_grad(valid) if valid_all is None else valid_all.bool()
    if keys is not None and keys_all is None:
        keys_all = gather_no_grad(keys)
    col_ids = torch.arange(a_all.shape[0], device=a.device)
    if full:
        return (
            a_all,
            b_all,
            a_all,
            b_all,
            col_ids,
            col_ids,
            valid_all,
            valid_all,
            keys_all,
            keys_all,
            valid_all.sum(),
        )
    norm = valid_all.sum() / world_size
    return a, b, a_all, b_all, row_ids, col_ids, valid, valid_all, keys, keys_all, norm


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
    a_all: torch.Tensor | None = None,
    b_all: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    valid_all: torch.Tensor | None = None,
    keys_all: torch.Tensor | None = None,
) -> torch.Tensor:
    """½·(CE(a→b) + CE(b→a)), each averaged over rows, positives on the diagonal.

    a, b: this rank's L2-normalised features [B_local, D]; logit_scale: the multiplier
    (already exponentiated). gather:
      - "local": this rank's rows against all ranks' columns (B_local x B_global logits);
      - "full": the whole B_global x B_global matrix on every rank;
      - "none": negatives from the local batch only.
    a_all / b_all: already-gathered features (a modality is gathered once per step).
    valid: [B_local] rows that have both modalities; the others drop out of rows and columns.
    keys: [B_local] int64; rows with equal keys >= 0 are positives too (multi-positive).
    valid_all / keys_all: already-gathered valid and keys (saves collectives).
    """
    ra, rb, ca, cb, row_ids, col_ids, vr, vc, kr, kc, norm = _prepare(
        a, b, gather, a_all, b_all, valid, keys, valid_all, keys_all
    )
    pos = positive_mask(row_ids, col_ids, kr, kc)
    loss_ab = _soft_ce_sum(logit_scale * ra @ cb.t(), pos, vr, vc)
    loss_ba = _soft_ce_sum(logit_scale * rb @ ca.t(), pos, vr, vc)
    return 0.5 * (loss_ab + loss_ba) / norm.clamp(min=1e-6)  # the sum is 0 when no row is valid


class _ChunkedSigmoid(torch.autograd.Function):
    """Σ over valid pairs of −log σ(z·(s·a_i·b_j + bias)), z = +1 for positives, −1 otherwise.

    Column chunks are computed in forward and recomputed in backward: nothing of size
    rows x columns is kept, so memory is O(rows x chunk) however many ranks there are.
    """

    @staticmethod
    def forward(ctx, rows, cols, scale, bias, row_ids, col_ids, rkeys, ckeys, vr, vc, chunk):
        ctx.save_for_backward(rows, cols, scale, bias, row_ids, col_ids, rkeys, ckeys, vr, vc)
        ctx.chunk = chunk
        total = rows.new_zeros(())
        for start in range(0, cols.shape[0], chunk):
            z, w, logits = _sigmoid_chunk(
                rows, cols, scale, bias, row_ids, col_ids, rkeys, ckeys, vr, vc, start, chunk
            )
            total = total - (F.logsigmoid(z * logits) * w).sum()
        return total

    @staticmethod
    def backward(ctx, grad_out):
        rows, cols, scale, bias, *ids_and_masks = ctx.saved_tensors
        chunk = ctx.chunk
        grad_rows = torch.zeros_like(rows)
        grad_cols = torch.zeros_like(cols)
        grad_scale = torch.zeros_like(scale)
        grad_bias = torch.zeros_like(bias)
        for start in range(0, cols.shape[0], chunk):
            z, w, logits = _sigmoid_chunk(rows, cols, scale, bias, *ids_and_masks, start, chunk)
            # d/dl of −log σ(z·l) = −z·σ(−z·l)
            dl = -z * torch.sigmoid(-z * logits) * w * grad_out
            block = cols[start : start + chunk]
            grad_rows += scale * dl @ block
            grad_cols[start : start + chunk] = scale * dl.t() @ rows
            grad_scale += (dl * (rows @ block.t())).sum()
            grad_bias += dl.sum()
        return grad_rows, grad_cols, grad_scale, grad_bias, *([None] * 7)


def _sigmoid_chunk(rows, cols, scale, bias, row_ids, col_ids, rkeys, ckeys, vr, vc, start, chunk):
    end = start + chunk
    has_keys = rkeys.numel() > 0
    pos = positive_mask(
        row_ids,
        col_ids[start:end],
        rkeys if has_keys else None,
        ckeys[start:end] if has_keys else None,
    )
    z = pos.to(rows.dtype) * 2 - 1
    w = (vr[:, None] & vc[None, start:end]).to(rows.dtype)
    logits = scale * rows @ cols[start:end].t() + bias
    return z, w, logits


def sigmoid_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    gather: str = "local",
    a_all: torch.Tensor | None = None,
    b_all: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    valid_all: torch.Tensor | None = None,
    keys_all: torch.Tensor | None = None,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss, summed over columns and averaged over rows.

    Same arguments as info_nce plus the learnable logit_bias; computed in column chunks of
    chunk_size that are recomputed in backward.
    """
    ra, _, _, cb, row_ids, col_ids, vr, vc, kr, kc, norm = _prepare(
        a, b, gather, a_all, b_all, valid, keys, valid_all, keys_all
    )
    empty = row_ids.new_zeros(0)
    if ra.dtype in (torch.float16, torch.bfloat16):  # the pairwise sums stay in float32
        ra, cb = ra.float(), cb.float()
    total = _ChunkedSigmoid.apply(
        ra,
        cb,
        logit_scale.to(ra.dtype),
        logit_bias.to(ra.dtype),
        row_ids,
        col_ids,
        kr if kr is not None else empty,
        kc if kc is not None else empty,
        vr,
        vc,
        max(int(chunk_size), 1),
    )
    return total / norm.clamp(min=1e-6)  # the sum is 0 when no row is valid


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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of a pair loss over every modality pair.

    Under torch.distributed, one collective gathers every modality's features together with
    the presence flags (plus one for keys and one tiny batch-size check): per step, not per pair.
    """
    if kind not in CONTRASTIVE_KINDS:
        raise ValueError(f"contrastive kind must be one of {sorted(CONTRASTIVE_KINDS)}")
    pair_weights = pair_weights or {}
    mods = list(embeddings)
    gathered: dict[str, torch.Tensor] = {}
    present_all: dict[str, torch.Tensor] = {}
    keys_all = None
    if gather != "none" and world()[1] > 1:
        check_equal_batch(embeddings[mods[0]].shape[0])
        columns = [embeddings[m] for m in mods]
        if present is not None:
            flags = torch.stack([present[m] for m in mods], 1)
            columns.append(flags.to(columns[0].dtype))
        packed = gather_with_grad(torch.cat(columns, 1))
        offset = 0
        for m in mods:
            width = embeddings[m].shape[1]
            gathered[m] = packed[:, offset : offset + width]
            offset += width
        if present is not None:
            flags_all = packed[:, offset:].detach() > 0
            present_all = {m: flags_all[:, j] for j, m in enumerate(mods)}
        keys_all = gather_no_grad(keys) if keys is not None else None
    total = None
    per_pair = {}
    for a, b in itertools.combinations(mods, 2):
        name = pair_name(a, b)
        weight = pair_weights.get(name, pair_weights.get(pair_name(b, a), 1.0))
        valid = valid_all = None
        if present is not None:
            valid = (present[a] > 0) & (present[b] > 0)
        if gathered:
            valid_all = (
                present_all[a] & present_all[b]
                if present is not None
                else torch.ones(gathered[a].shape[0], dtype=torch.bool, device=packed.device)
            )
        extra = {"logit_bias": logit_bias, "chunk_size": chunk_size} if kind == "sigmoid" else {}
        loss = CONTRASTIVE_KINDS[kind](
            embeddings[a],
            embeddings[b],
            logit_scale,
            gather=gather,
            a_all=gathered.get(a),
            b_all=gathered.get(b),
            valid=valid,
            keys=keys,
            valid_all=valid_all,
            keys_all=keys_all,
            **extra,
        )
        per_pair[name] = loss.detach()
        total = weight * loss if total is None else total + weight * loss
    return total, per_pair
