"""The fusion head: one modality's tokens (the query, e.g. a question's) attend to each other
and, by cross-attention, to the other modalities' tokens (an image's patches); a [CLS] token's
final state is classified over the answers (ALBEF/ViLT-style fusion, VQA as classification)."""

from __future__ import annotations

import torch
from torch import nn

MAX_TOKENS = 1024  # learned positions per modality (a 64 px image in a small CNN: 256)


class FusionHead(nn.Module):
    def __init__(
        self,
        widths: dict[str, int],
        query: str,
        num_answers: int,
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
    ):
        super().__init__()
        self.query = query
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

    def _embed(self, m: str, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > MAX_TOKENS:
            raise ValueError(f"{m}: {tokens.shape[1]} tokens; the fusion head takes {MAX_TOKENS}")
        return self.inputs[m](tokens) + self.positions[m][: tokens.shape[1]]

    def forward(
        self,
        tokens: dict[str, tuple[torch.Tensor, torch.Tensor]],
        present: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """tokens: modality -> (states [B, T, W], real [B, T]); a row without a modality
        attends to none of its tokens. → answer logits [B, num_answers]."""
        q, q_mask = tokens[self.query]
        q_mask = q_mask & (present[self.query] > 0)[:, None]
        x = torch.cat([self.cls.expand(q.shape[0], -1, -1), self._embed(self.query, q)], 1)
        keep = torch.cat([q_mask.new_ones(q.shape[0], 1), q_mask], 1)
        others = self.context or [self.query]  # alone (a blind baseline): it attends to itself
        memory = torch.cat([self._embed(m, tokens[m][0]) for m in others], 1)
        m_keep = torch.cat([tokens[m][1] & (present[m] > 0)[:, None] for m in others], 1)
        # A row with nothing to attend to attends to the first token (zeros), not to 0/0.
        m_keep = m_keep | (~m_keep.any(1, keepdim=True) & (torch.arange(m_keep.shape[1],
                           device=m_keep.device) == 0))  # fmt: skip
        x = self.layers(x, memory, tgt_key_padding_mask=~keep, memory_key_padding_mask=~m_keep)
        return self.answer(self.norm(x[:, 0]))
