"""Explicit (mined hard) negatives for the pair losses: each row's K extra candidates of one
modality, scored by every row of the global batch as extra columns, never as positives."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from polymodal.objectives.gather import gather_no_grad, gather_with_grad


@dataclass(frozen=True)
class Negatives:
    """Extra candidates of one modality: L2-normalised features [B, K, D] (encoded by that
    modality's tower, like its rows) and which exist, [B, K] bool (None: all of them).

    Shared, as sentence-transformers' MultipleNegativesRankingLoss shares the negatives of
    (anchor, positive, negative) triplets: every row's negatives are columns for every row
    of the global batch (gathered from every rank like the in-batch candidates), so a row
    meets W·B·K of them, not only its own K.
    """

    features: torch.Tensor
    valid: torch.Tensor | None = None

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [B·K, D], valid [B·K] bool), row i's K candidates next to each other."""
        features = self.features.flatten(0, 1)
        if self.valid is None:
            return features, torch.ones(features.shape[0], dtype=torch.bool, device=features.device)
        return features, self.valid.reshape(-1).bool()

    def gathered(self) -> Negatives:
        """Every rank's negatives in rank order, gradients back to their owners."""
        valid = self.valid
        if valid is None:
            valid = torch.ones(
                self.features.shape[:2], dtype=torch.bool, device=self.features.device
            )
        return Negatives(gather_with_grad(self.features), gather_no_grad(valid.bool()))


def negative_columns(
    negatives: Negatives | None, gathered: Negatives | None, spans_ranks: bool
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The extra columns (features, valid) that rows are scored against: this rank's own, or
    every rank's when the loss spans ranks (`gathered`, when the caller already has them)."""
    if negatives is None:
        return None
    if not spans_ranks:
        return negatives.flat()
    return (negatives.gathered() if gathered is None else gathered).flat()


def with_negatives(
    logits: torch.Tensor,
    rows: torch.Tensor,
    pos: torch.Tensor,
    col_valid: torch.Tensor,
    extra: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, positives, valid columns) with the negatives' columns appended. Their logits
    are a second product (rows are already scaled), so the in-batch ones stay bit for bit
    those of the loss without negatives."""
    features, valid = extra
    logits = torch.cat([logits, rows @ features.t()], 1)
    pos = torch.cat([pos, pos.new_zeros((pos.shape[0], features.shape[0]))], 1)
    return logits, pos, torch.cat([col_valid, valid])


def pack(negatives: dict[str, Negatives]) -> list[torch.Tensor]:
    """Columns [B, K·D] and [B, K] per direction, to ride in the step's one collective."""
    columns = []
    for n in negatives.values():
        b, k, _ = n.features.shape
        valid = n.valid if n.valid is not None else torch.ones(b, k, device=n.features.device)
        columns += [n.features.flatten(1), valid.to(n.features.dtype)]
    return columns


def unpack(
    packed: torch.Tensor, offset: int, negatives: dict[str, Negatives]
) -> dict[str, Negatives]:
    """pack's columns of every rank's rows (from `offset` in `packed`), back as Negatives."""
    out = {}
    for key, n in negatives.items():
        _, k, d = n.features.shape
        features = packed[:, offset : offset + k * d].unflatten(1, (k, d))
        valid = packed[:, offset + k * d : offset + k * d + k].detach() > 0
        out[key] = Negatives(features, valid)
        offset += k * d + k
    return out
