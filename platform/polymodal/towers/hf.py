"""Pretrained towers from Hugging Face transformers, from a local directory or a hub id: any
text model (pooled over [CLS] or the mean of real tokens), vision model (its pooled output) and
audio model on raw waveforms (its hidden states averaged over time)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from polymodal.towers.tuning import ImageTunable, Tunable

if TYPE_CHECKING:
    from transformers import PreTrainedModel

POOLINGS = ("cls", "mean")


def load_options(ref: str) -> dict:
    """A local directory never touches the network; a hub id is looked up only online."""
    offline = Path(ref).is_dir() or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    return {"local_files_only": offline}


def pretrained_model(ref: str | Path) -> PreTrainedModel:
    """transformers' AutoModel for `ref` (slow import, seconds: only for these towers)."""
    from transformers import AutoModel
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()  # a per-load progress bar is noise in logs
    return AutoModel.from_pretrained(str(ref), **load_options(str(ref)))


@functools.lru_cache(maxsize=8)
def tokenizer(ref: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ref, **load_options(ref))


def encode(text: str, ref: str, max_len: int):
    """The tokenizer's ids for `text`, shifted up by one so that 0 is padding for every
    tokenizer (RoBERTa's own padding id is 1, its [CLS] is 0)."""
    import numpy as np

    ids = tokenizer(ref)(text, truncation=True, max_length=max_len)["input_ids"]
    out = np.zeros(max_len, dtype=np.int64)
    out[: len(ids)] = np.asarray(ids, dtype=np.int64) + 1
    return out


def vocab_size(ref: str) -> int:
    return len(tokenizer(ref)) + 1  # + padding


def image_settings(ref: str) -> dict:
    """Size, mean and std from the model's image processor."""
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(ref, **load_options(ref))
    size = proc.crop_size if getattr(proc, "do_center_crop", False) else proc.size
    side = size.get("height") or size.get("shortest_edge")
    return {"size": int(side), "mean": list(proc.image_mean), "std": list(proc.image_std)}


def audio_settings(ref: str) -> dict:
    """Sample rate and normalisation from the model's feature extractor."""
    from transformers import AutoFeatureExtractor

    fx = AutoFeatureExtractor.from_pretrained(ref, **load_options(ref))
    return {"audio_rate": int(fx.sampling_rate), "audio_normalize": bool(fx.do_normalize)}


class HFText(Tunable):
    """Token ids (the tokenizer's + `shift`, 0 = padding) → the last hidden state at [CLS]
    or its mean over real tokens; tuning as in towers/tuning.py."""

    net: PreTrainedModel

    def __init__(
        self,
        ref: str | Path,
        pooling: str = "mean",
        tuning: str = "finetune",
        lr_scale: float = 1.0,
        shift: int = 1,
    ):
        super().__init__(tuning, lr_scale)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.net = pretrained_model(ref)
        if getattr(self.net, "pooler", None) is not None:
            # Unused here: DDP would wait for its gradients. (Setting the attribute to None
            # does the same; torch types module attributes as never None.)
            self.net.register_module("pooler", None)
        self.pooling, self.shift = pooling, shift
        self.out_dim = self.net.config.hidden_size
        self.freeze_if_asked()
        # Checkpoints of the MiniLM tower, from before it was an HFText, name it `bert`.
        self.register_load_state_dict_pre_hook(_renamed_bert)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.pool(*self.tokens(ids))

    def tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last hidden states [B, L, W] (L: the batch's longest text) and which are real."""
        keep = ids.ne(0)
        length = max(int(keep.sum(1).max()), 1)  # trim to the longest text of the batch
        ids, keep = ids[:, :length], keep[:, :length]
        tokens = (ids - self.shift).clamp(min=0)
        with torch.set_grad_enabled(self.grad_enabled()):
            x = self.net(input_ids=tokens, attention_mask=keep.long()).last_hidden_state
        return x, keep

    def pool(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return x[:, 0]
        w = keep.unsqueeze(-1).to(x.dtype)
        return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


def _renamed_bert(module, state, prefix, *args) -> None:
    for key in [k for k in state if k.startswith(prefix + "bert.")]:
        state[prefix + "net." + key[len(prefix) + 5 :]] = state.pop(key)


class HFVision(ImageTunable):
    """Images in [0, 1] (grey repeats as RGB) → the vision model's pooled output, normalised
    with its image processor's mean and std; tuning as in towers/tuning.py. A CLIP or SigLIP
    checkpoint holding both towers gives its vision tower."""

    def __init__(
        self,
        ref: str | Path,
        mean: list[float],
        std: list[float],
        tuning: str = "finetune",
        lr_scale: float = 1.0,
    ):
        super().__init__(mean, std, tuning, lr_scale)
        model = pretrained_model(ref)
        self.net = getattr(model, "vision_model", model)
        config = getattr(self.net, "config", model.config)
        self.out_dim = config.hidden_size
        self.freeze_if_asked()

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=x).pooler_output


class HFAudio(Tunable):
    """Waveforms [B, samples] at the model's rate → its last hidden states averaged over
    time; tuning as in towers/tuning.py."""

    net: PreTrainedModel

    def __init__(self, ref: str | Path, tuning: str = "finetune", lr_scale: float = 1.0):
        super().__init__(tuning, lr_scale)
        self.net = pretrained_model(ref)
        self.out_dim = self.net.config.hidden_size
        self.freeze_if_asked()

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.grad_enabled()):
            return self.net(input_values=waves).last_hidden_state.mean(1)
