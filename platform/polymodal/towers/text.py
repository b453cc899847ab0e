"""Text tower: a small transformer over UTF-8 byte ids (no vocabulary to download)."""

from __future__ import annotations

import torch
from torch import nn


class ByteTransformer(nn.Module):
    def __init__(
        self,
        max_len: int,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
        vocab: int = 257,
        pad_id: int = 0,
    ):
        super().__init__()
        self.out_dim = width
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab, width, padding_idx=pad_id)
        self.pos = nn.Parameter(torch.zeros(max_len, width))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            dim_feedforward=width * 4,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
            activation="gelu",
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.pool(*self.tokens(ids))

    def tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each byte's state [B, L, W] (L: the batch's longest text) and which are real."""
        # Trim to the longest text in the batch: short captions cost little.
        keep = ids.ne(self.pad_id)
        length = max(int(keep.sum(1).max()), 1)
        ids, keep = ids[:, :length], keep[:, :length]
        x = self.embed(ids) + self.pos[:length]
        # An empty text attends to its first (pad) position: with every key masked,
        # attention is 0/0 and the embedding NaN.
        first = torch.arange(length, device=ids.device) == 0
        attend = keep | (first & ~keep.any(1, keepdim=True))
        x = self.encoder(x, src_key_padding_mask=~attend)
        return self.norm(x), keep

    @staticmethod
    def pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over real bytes; an empty text pools to zeros."""
        w = mask.unsqueeze(-1).to(tokens.dtype)
        return (tokens * w).sum(1) / w.sum(1).clamp(min=1.0)
