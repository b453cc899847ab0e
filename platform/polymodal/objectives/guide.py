"""False-negative filtering with a frozen guide model (GISTEmbed, Solatorio 2024): a candidate
that the guide scores within a margin of the row's own pair is masked out of the row's loss
(in-batch columns and explicit negatives alike), since it is likely a positive in disguise."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from polymodal.objectives.gather import gather_no_grad


@dataclass(frozen=True)
class Guide:
    """A guide's embeddings for one pair (a, b), each rank's own: rows [B, Dg] (any values
    where absent: those rows and columns are invalid anyway), the explicit negatives of b
    (negatives_b, [B, K, Dg]) and of a; `everyone` the same for every rank's rows when the
    caller gathered them already. margin: how far below the row's own score a candidate
    must stay to remain a negative (absolute, GISTEmbed's margin_strategy "absolute")."""

    a: torch.Tensor
    b: torch.Tensor
    negatives_b: torch.Tensor | None = None
    negatives_a: torch.Tensor | None = None
    margin: float = 0.0
    everyone: Guide | None = None

    def gathered(self) -> Guide:
        if self.everyone is not None:
            return self.everyone
        tensors = gather_all([t for t in self.tensors() if t is not None])
        it = iter(tensors)
        a, b = next(it), next(it)
        neg_b = next(it) if self.negatives_b is not None else None
        neg_a = next(it) if self.negatives_a is not None else None
        return Guide(a, b, neg_b, neg_a, self.margin)

    def tensors(self) -> list[torch.Tensor | None]:
        return [self.a, self.b, self.negatives_b, self.negatives_a]


def gather_all(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every rank's rows of each tensor (same first dimension), in one collective."""
    flat = torch.cat([t.flatten(1) for t in tensors], 1)
    everyone = gather_no_grad(flat)
    out, offset = [], 0
    for t in tensors:
        width = t[0].numel()
        out.append(everyone[:, offset : offset + width].unflatten(1, t.shape[1:]))
        offset += width
    return out


def ignored(
    guide: Guide, layout: str, positives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, columns (+ explicit negatives)] bool per direction (a→b, b→a): the cells the
    guide masks, never positives. layout: "own" (this rank's rows and columns), "local"
    (this rank's rows, every rank's columns) or "full" (every rank's both), as pair_layout
    laid the logits out."""
    cols = guide if layout == "own" else guide.gathered()
    rows = cols if layout == "full" else guide
    own = (rows.a * rows.b).sum(1, keepdim=True)  # each row's score of its own pair
    limit = own - guide.margin
    out = []
    for r, c, extra in ((rows.a, cols.b, cols.negatives_b), (rows.b, cols.a, cols.negatives_a)):
        mask = (r @ c.t() > limit) & ~positives
        if extra is not None:
            mask = torch.cat([mask, r @ extra.flatten(0, 1).t() > limit], 1)
        out.append(mask)
    return out[0], out[1]
