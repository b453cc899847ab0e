"""The fusion head: one modality's tokens (the query, e.g. a question's) attend to each other
and, by cross-attention, to the other modalities' tokens (an image's patches); a [CLS] token's
final state is classified over the answers (ALBEF/ViLT-style fusion, VQA as classification).

Tokens get learned positions; a grid of patches [B, H, W, C] (a CNN's feature map) also gets
fixed 2-D sin-cos ones (MAE's), so where a patch is, left or right, is given, not learned.
`patch_pool` average-pools a grid first (fewer, larger patches: less attention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_TOKENS = 1024  # learned positions per modality (a 64 px image in a small CNN: 256)


def grid_positions(h: int, w: int, width: int) -> torch.Tensor:
    """[h * w, width] row-major: sin and cos of x, then of y, at width / 4 frequencies each."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    freq = 1.0 / 100 ** (torch.arange(width // 4) / max(width // 4, 1))
    angles = [c.flatten()[:, None].float() * freq for c in (x, y)]
    out = torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], 1)
    return F.pad(out, (0, width - out.shape[1]))


class FusionHead(nn.Module):
    def __init__(
        self,
        widths: dict[str, int],
        query: str,
        num_answers: int,
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
        patch_pool: int = 1,
    ):
        super().__init__()
        self.query, self.patch_pool = query, patch_pool
        self.context = [m for m in widths if m != query]
        self.inputs = nn.ModuleDict({m: nn.Linear(w, width) for m, w in widths.items()})
        self.positions = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(MAX_TOKENS, width) * 0.02) for m in widths}
        )
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        layer = nn.TransformerDecoderLayer(
            width, heads, width * 4, dropout=0.0, batch_first=True, norm_first=True,
            activation="gelu",
        )  # fmt: skip
        self.layers = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(width)
        self.answer = nn.Linear(width, num_answers)

    def _embed(
        self, m: str, tokens: torch.Tensor, mask: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A modality's tokens in the head's width with their positions, [B, T, width], and
        which it attends to, [B, T]: real tokens of rows that have the modality."""
        where: torch.Tensor | float = 0.0
        if tokens.dim() == 4:  # a grid of patches: pooled, flattened row-major, 2-D positions
            if self.patch_pool > 1:
                tokens = F.avg_pool2d(tokens.permute(0, 3, 1, 2), self.patch_pool, ceil_mode=True)
                tokens = tokens.permute(0, 2, 3, 1)
                mask = F.max_pool2d(mask[:, None].float(), self.patch_pool, ceil_mode=True)[:, 0]
            h, w = tokens.shape[1:3]
            where = grid_positions(h, w, self.cls.shape[-1]).to(tokens)
            tokens, mask = tokens.flatten(1, 2), mask.flatten(1) > 0
        if tokens.shape[1] > MAX_TOKENS:
            raise ValueError(f"{m}: {tokens.shape[1]} tokens; the fusion head takes {MAX_TOKENS}")
        x = self.inputs[m](tokens) + self.positions[m][: tokens.shape[1]] + where
        return x, mask & (present > 0)[:, None]

    def forward(
        self,
        tokens: dict[str, tuple[torch.Tensor, torch.Tensor]],
        present: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """tokens: modality -> (states [B, T, W] or [B, H, W, C], which are real [B, T] or
        [B, H, W]); a row without a modality attends to none of its tokens. → answer logits
        [B, num_answers]."""
        q, q_keep = self._embed(self.query, *tokens[self.query], present[self.query])
        x = torch.cat([self.cls.expand(q.shape[0], -1, -1), q], 1)
        keep = torch.cat([q_keep.new_ones(q.shape[0], 1), q_keep], 1)
        others = self.context or [self.query]  # alone (a blind baseline): it attends to itself
        memory, m_keep = (
            torch.cat(parts, 1)
            for parts in zip(*(self._embed(m, *tokens[m], present[m]) for m in others))
        )
        # A row with nothing to attend to attends to the first token (zeros), not to 0/0.
        m_keep = m_keep | (~m_keep.any(1, keepdim=True) & (torch.arange(m_keep.shape[1],
                           device=m_keep.device) == 0))  # fmt: skip
        x = self.layers(x, memory, tgt_key_padding_mask=~keep, memory_key_padding_mask=~m_keep)
        return self.answer(self.norm(x[:, 0]))
