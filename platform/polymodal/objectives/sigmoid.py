"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023) over one modality pair, exact across ranks,
in column chunks recomputed in backward so that memory stays O(rows x chunk)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from polymodal.objectives.guide import Guide, ignored
from polymodal.objectives.layout import Gathered, PairMask, guide_layout, pair_layout, spans_ranks
from polymodal.objectives.negatives import Negatives, negative_columns


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
    w = mask.row_valid[:, None] & mask.col_valid[None, start:end]
    if mask.ignore is not None:
        w = w & ~mask.ignore[:, start:end]
    w = w.to(rows.dtype)
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
    guide: Guide | None = None,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss, summed over columns and averaged over rows.

    Same arguments as info_nce plus the learnable logit_bias; computed in column chunks of
    chunk_size that are recomputed in backward. Explicit negatives are extra columns with
    z = −1 for every valid row: negatives_b (every rank's, as info_nce's) against the a
    rows, negatives_a against the b rows, each in chunks of their own. A guide's masked
    cells (guide.ignored; a→b's for the in-batch ones) weigh 0.
    """
    p = pair_layout(a, b, gather, valid, keys, gathered)
    chunk = max(int(chunk_size), 1)
    ignore_ab = ignore_ba = None
    columns = p.cols_b.shape[0]
    if guide is not None:
        ignore_ab, ignore_ba = ignored(guide, guide_layout(gather), p.mask.positives())
    in_batch = p.mask
    if ignore_ab is not None:
        in_batch = dataclasses.replace(p.mask, ignore=ignore_ab[:, :columns])
    total = _sigmoid_sum(p.rows_a, p.cols_b, logit_scale, logit_bias, in_batch, chunk)
    spans = spans_ranks(gather)
    for rows, negatives, got, ignore in (
        (p.rows_a, negatives_b, gathered.negatives_b if gathered else None, ignore_ab),
        (p.rows_b, negatives_a, gathered.negatives_a if gathered else None, ignore_ba),
    ):
        extra = negative_columns(negatives, got, spans)
        if extra is not None:
            # Column ids -1 and no keys: no row's id matches, so every z is −1.
            ids = torch.full_like(extra[1], -1, dtype=torch.long)
            mask = PairMask(
                p.mask.row_ids,
                ids,
                p.mask.row_valid,
                extra[1],
                ignore=None if ignore is None else ignore[:, columns:],
            )
            total = total + _sigmoid_sum(rows, extra[0], logit_scale, logit_bias, mask, chunk)
    return total / p.norm.clamp(min=1e-6)  # the sum is 0 when no row is valid


def _sigmoid_sum(rows, cols, scale, bias, mask: PairMask, chunk: int) -> torch.Tensor:
    if rows.dtype in (torch.float16, torch.bfloat16):  # the pairwise sums stay in float32
        rows, cols = rows.float(), cols.float()
    return _ChunkedSigmoid.apply(rows, cols, scale.to(rows.dtype), bias.to(rows.dtype), mask, chunk)
