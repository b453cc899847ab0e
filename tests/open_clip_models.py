"""A tiny, randomly initialised OpenCLIP model in open_clip's local-dir layout
(open_clip_config.json + weights), loaded back as a user loads a real one."""

from __future__ import annotations

import json
from pathlib import Path

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
PREPROCESS = {"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]}


def tiny_clip(out: Path, seed: int = 0, bias: float | None = None) -> Path:
    """`bias`: a SigLIP-style logit bias."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    cfg = TINY if bias is None else {**TINY, "init_logit_bias": bias}
    model = CLIP(**cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": PREPROCESS})
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        out / "open_clip_model.safetensors",
    )
    return out
