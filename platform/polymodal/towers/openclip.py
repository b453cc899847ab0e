"""OpenCLIP's two towers as polymodal towers (image: `visual`; text: its token embedding,
transformer and projection), and the state-dict names between an open_clip model and ours."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.towers.tuning import ImageTunable, Tunable

if TYPE_CHECKING:
    from open_clip.model import CLIP, CustomTextCLIP

# Where each tower's `net` sits in an open_clip model's state dict.
PREFIX = {"image": "visual.", "text": ""}  # CLIP keeps its text parts at the root
CUSTOM_TEXT_PREFIX = "text."  # CustomTextCLIP (SigLIP, ...) keeps them under `text`


def is_custom_text(model_cfg: dict[str, Any]) -> bool:
    return bool(model_cfg.get("custom_text")) or "hf_model_name" in model_cfg.get("text_cfg", {})


def build_open_clip(model_cfg: dict[str, Any]) -> CLIP | CustomTextCLIP:
    """A randomly initialised open_clip CLIP or CustomTextCLIP from its model config (what
    open_clip_config.json's model_cfg holds); nothing is downloaded."""
    from open_clip.model import CLIP, CustomTextCLIP  # only for these towers

    cfg = copy.deepcopy(model_cfg)
    if "multimodal_cfg" in cfg:
        raise ValueError("open_clip CoCa models are not supported: they are captioners")
    custom = is_custom_text(cfg)
    cfg.pop("custom_text", None)
    cfg.get("vision_cfg", {})["timm_model_pretrained"] = False
    if "hf_model_name" in cfg.get("text_cfg", {}):
        raise ValueError(
            "open_clip models with a Hugging Face text tower are not supported yet; "
            "use model.text.encoder: hf with that text model instead"
        )
    return (CustomTextCLIP if custom else CLIP)(**cfg)


class CLIPText(nn.Module):
    """CLIP's text parts under open_clip's own names, and its encode_text."""

    def __init__(self, clip: CLIP):
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.pool_type, self.eos_id = clip.text_pool_type, getattr(clip, "text_eos_id", None)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        x = self.token_embedding(ids) + self.positional_embedding
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))
        x = text_global_pool(x, ids, self.pool_type, eos_token_id=self.eos_id)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x if self.text_projection is None else x @ self.text_projection


class OpenCLIPImage(ImageTunable):
    """Images in [0, 1] (grey repeats as RGB), normalised with the model's mean and std →
    open_clip's encode_image (already projected: `projects`)."""

    projects = True

    def __init__(
        self,
        clip: CLIP | CustomTextCLIP,
        embed_dim: int,
        mean: list[float],
        std: list[float],
        tuning: str = "finetune",
        lr_scale: float = 1.0,
    ):
        super().__init__(mean, std, tuning, lr_scale)
        self.net = clip.visual
        self.out_dim = embed_dim
        self.freeze_if_asked()


class OpenCLIPText(Tunable):
    """open_clip token ids (0 pads) at the full context length → encode_text (projected)."""

    projects = True

    def __init__(
        self,
        clip: CLIP | CustomTextCLIP,
        embed_dim: int,
        tuning: str = "finetune",
        lr_scale: float = 1.0,
    ):
        super().__init__(tuning, lr_scale)
        self.net = clip.text if hasattr(clip, "text") else CLIPText(clip)
        self.out_dim = embed_dim
        self.freeze_if_asked()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.grad_enabled()):
            return self.net(ids)


def encode(clip: CLIP | CustomTextCLIP, modality: str, x: torch.Tensor) -> torch.Tensor:
    """open_clip's own normalised embedding, to compare ours with."""
    fn = clip.encode_image if modality == "image" else clip.encode_text
    return F.normalize(fn(x), dim=-1)


def _names(custom_text: bool) -> list[tuple[str, str]]:
    """(our name or prefix, open_clip's), the scalars first: CLIP's text prefix is empty."""
    return [
        ("log_logit_scale", "logit_scale"),
        ("logit_bias", "logit_bias"),
        ("encoders.image.net.", PREFIX["image"]),
        ("encoders.text.net.", CUSTOM_TEXT_PREFIX if custom_text else PREFIX["text"]),
    ]


def _renamed(state: dict[str, torch.Tensor], pairs: list[tuple[str, str]]) -> dict:
    out = {}
    for key, value in state.items():
        for src, dst in pairs:
            if key == src:
                out[dst] = value.reshape(())
                break
            if src.endswith(".") or not src:
                if key.startswith(src):
                    out[dst + key[len(src) :]] = value
                    break
    return out


def to_polymodal(state: dict[str, torch.Tensor], custom_text: bool) -> dict[str, torch.Tensor]:
    """An open_clip state dict under JointModel's names (logit_scale is already a log)."""
    return _renamed(state, [(theirs, ours) for ours, theirs in _names(custom_text)])


def to_open_clip(state: dict[str, torch.Tensor], custom_text: bool) -> dict[str, torch.Tensor]:
    """JointModel's image and text towers and logit scale/bias under open_clip's names."""
    return _renamed(state, _names(custom_text))
