"""A pretrained text tower: all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide), mean-pooled as
sentence-transformers does, loaded offline from its pip package; lockable (LiT)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from polymodal.towers.tuning import Tunable

MAX_CACHED = 200_000  # pooled features of a frozen tower kept per distinct text (~1.5 KB each)


class MiniLM(Tunable):
    """Token ids → the mean of BERT's last hidden states over real tokens; tuning as in
    towers/tuning.py."""

    def __init__(
        self, model_dir: Path, tuning: str = "finetune", lr_scale: float = 1.0, pad_id: int = 0
    ):
        super().__init__(tuning, lr_scale)
        self.pad_id = pad_id
        # Slow import (seconds): only for this tower. Its per-load progress bar is noise in logs.
        from transformers import BertModel
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()
        self.bert = BertModel.from_pretrained(str(model_dir), local_files_only=True)
        self.out_dim = self.bert.config.hidden_size
        # A frozen tower is a fixed function: in training its features are computed once per
        # distinct text (LiT precomputes them the same way); captions repeat every epoch.
        # Not in eval mode: a serving replica would grow with every new text.
        self.cache: dict[bytes, torch.Tensor] | None = None
        self.freeze_if_asked()
        if tuning == "freeze":
            self.cache = {}

    @property
    def inner(self) -> nn.Module:
        return self.bert

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.cache is None or not self.training:
            return self._pooled(ids)
        keys = [row.tobytes() for row in ids.cpu().numpy()]
        todo = sorted({i for i, k in enumerate(keys) if k not in self.cache})
        fresh = dict(zip(todo, self._pooled(ids[todo]).float())) if todo else {}
        for i, x in fresh.items():
            if len(self.cache) < MAX_CACHED:
                self.cache[keys[i]] = x
        return torch.stack([fresh[i] if i in fresh else self.cache[k] for i, k in enumerate(keys)])

    def _pooled(self, ids: torch.Tensor) -> torch.Tensor:
        keep = ids.ne(self.pad_id)
        length = max(int(keep.sum(1).max()), 1)
        ids, keep = ids[:, :length], keep[:, :length]
        with torch.set_grad_enabled(self.grad_enabled()):
            x = self.bert(input_ids=ids, attention_mask=keep.long()).last_hidden_state
        w = keep.unsqueeze(-1).to(x.dtype)
        return (x * w).sum(1) / w.sum(1).clamp(min=1.0)
