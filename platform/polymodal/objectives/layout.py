"""How one modality pair's contrastive logits are laid out across ranks: which rows this rank
scores against which columns under each gather mode, which cells are positives or valid, and
what the summed loss divides by so that DDP's average gives the global batch's mean."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from polymodal.objectives.gather import check_equal_batch, gather_no_grad, gather_with_grad, world
from polymodal.objectives.negatives import Negatives

GATHER_MODES = ("local", "full", "none")


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
    global ids (same id: same sample), validity (both modalities present), keys, and the
    cells a guide masks out (guide.ignored; [rows, columns] bool)."""

    row_ids: torch.Tensor
    col_ids: torch.Tensor
    row_valid: torch.Tensor
    col_valid: torch.Tensor
    row_keys: torch.Tensor | None = None
    col_keys: torch.Tensor | None = None
    ignore: torch.Tensor | None = None

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


def span(gather: str, batch: int, device: torch.device):
    """(world size the loss spans, global ids of this rank's rows, whether rows are all ranks')."""
    if gather not in GATHER_MODES:
        raise ValueError(f"gather must be one of {GATHER_MODES}, got {gather!r}")
    rank, world_size = world()
    if gather == "none" or world_size == 1:
        return 1, torch.arange(batch, device=device), False
    if gather == "full":
        return world_size, torch.arange(batch * world_size, device=device), True
    return world_size, torch.arange(batch, device=device) + rank * batch, False


def spans_ranks(gather: str) -> bool:
    return gather != "none" and world()[1] > 1


def gather_pair(a, b, valid, keys) -> Gathered:
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
    world_size, row_ids, full = span(gather, n, a.device)
    if world_size == 1:
        mask = PairMask(row_ids, row_ids, valid, valid, keys, keys)
        return PairLayout(a, b, a, b, mask, valid.sum())
    g = gather_pair(a, b, valid, keys) if gathered is None else gathered
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


def guide_layout(gather: str) -> str:
    """guide.ignored's layout of a pair's logits under a gather mode."""
    if not spans_ranks(gather):
        return "own"
    return "full" if gather == "full" else "local"
