"""Vector encoder: an MLP over standardised features (tabular data, precomputed embeddings)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int = 256, width: int = 128, dropout: float = 0.0):
        super().__init__()
        self.out_dim = width
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A vector is one token."""
        out = self.net(x)[:, None]
        return out, out.new_ones(out.shape[:2], dtype=torch.bool)

    @staticmethod
    def pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]
