"""OpenCLIP in and out: `polymodal import open_clip` writes an OpenCLIP model as an ordinary
checkpoint; `polymodal export --format open_clip` writes one back in open_clip's local-dir form."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polymodal.config import Config, config_from_dict
from polymodal.modalities import MODALITIES, Preprocessing
from polymodal.objectives import TERMS
from polymodal.objectives.contrastive import CONTRASTIVE
from polymodal.openclip.checks import LOCAL_DIR, check_import, mismatch
from polymodal.run_meta import RunMeta

# torch and open_clip are imported inside the functions that use them: the arguments of
# `polymodal import` are checked first (checks.py), in a fraction of the seconds they take.
if TYPE_CHECKING:
    from polymodal.models.joint import JointModel


def objective(sigmoid: bool) -> dict[str, Any]:
    """Contrastive fine-tuning as OpenCLIP trains: no other term, its loss (SigLIP's when the
    model has a logit bias), the imported temperature."""
    weights = {name: float(term is CONTRASTIVE) for name, term in TERMS.items()}
    return {"weights": weights, CONTRASTIVE.name: {"kind": "sigmoid" if sigmoid else "infonce"}}


def open_clip_model(arch: str, weights: str | None):
    """(model with its weights, its model config, its preprocessing config) from open_clip:
    a built-in architecture name with a weights file, or local-dir:DIR (open_clip_config.json
    and weights, as `polymodal export --format open_clip` writes)."""
    import open_clip

    local = arch.startswith(LOCAL_DIR)
    if local:
        model_cfg = json.loads((Path(arch[len(LOCAL_DIR) :]) / "open_clip_config.json").read_text())
        model_cfg = model_cfg["model_cfg"]
    else:
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise ValueError(f"--model: open_clip has no architecture '{arch}'")
    try:  # open_clip loads with weights_only=True, and strictly
        model = open_clip.create_model(arch, pretrained=None if local else weights)
    except RuntimeError as exc:  # torch's load_state_dict: one line per key
        raise ValueError(mismatch(arch, weights, model_cfg, exc)) from None
    return model.eval(), model_cfg, dict(model.visual.preprocess_cfg)


def imported_config(arch: str, model_cfg: dict, preprocess: dict, bias: bool) -> Config:
    oc = {
        "arch": arch,
        "model_cfg": model_cfg,
        "image_mean": list(preprocess["mean"]),
        "image_std": list(preprocess["std"]),
        "image_resize": preprocess.get("resize_mode", "shortest"),
        "image_interpolation": preprocess.get("interpolation", "bicubic"),
    }
    return config_from_dict(
        {
            "model": {
                "modalities": ["image", "text"],
                "embed_dim": model_cfg["embed_dim"],
                "image": {"encoder": "open_clip"},
                "text": {"encoder": "open_clip"},
                "open_clip": oc,
            },
            "objective": objective(bias),
        }
    )


def import_open_clip(arch: str, weights: str | None, out: str | Path) -> dict[str, Any]:
    """Write OUT as a polymodal checkpoint of the OpenCLIP model; returns what it checked:
    the largest difference between our embeddings and open_clip's on the same inputs."""
    check_import(arch, weights, out)
    from polymodal.checkpoint import save_checkpoint
    from polymodal.models.build import build_model
    from polymodal.towers.openclip import is_custom_text, to_polymodal

    out = Path(out)
    clip, model_cfg, preprocess = open_clip_model(arch, weights)
    cfg = imported_config(arch, model_cfg, preprocess, clip.logit_bias is not None)
    settings: dict[str, Any] = {}
    for m in cfg.model.modalities:
        settings.update(MODALITIES[m].settings(cfg, None, None))
    prep = Preprocessing(cfg.model.modalities, **settings)
    model = build_model(cfg, prep).eval()
    state = to_polymodal(clip.state_dict(), is_custom_text(model_cfg))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"open_clip weights do not map: missing {missing}, unexpected {unexpected}"
        )
    diffs = embedding_differences(model, clip, prep)
    meta = RunMeta(
        config=cfg.to_dict(), preprocessing=prep.to_dict(), imported_from={"open_clip": arch}
    )
    save_checkpoint(out, model, meta)
    return {
        "out": str(out),
        "arch": arch,
        "embed_dim": model_cfg["embed_dim"],
        "max_abs_diff": diffs,
    }


def embedding_differences(model, clip, prep: Preprocessing) -> dict[str, float]:
    """Largest |ours - open_clip's| normalised embedding on the same image tensors and texts."""
    import numpy as np
    import torch

    from polymodal.modalities.text import encode_text
    from polymodal.towers.openclip import encode

    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.random((2, 3, prep.image_size, prep.image_size), np.float32))
    mean = torch.tensor(prep.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.image_std).view(1, 3, 1, 1)
    texts = ["a photo of a cat", "a diagram"]
    ids = torch.from_numpy(
        np.stack([encode_text(t, prep.text_max_len, prep.text_tokenizer) for t in texts])
    )
    with torch.no_grad():
        image = model.embed("image", pixels) - encode(clip, "image", (pixels - mean) / std)
        text = model.embed("text", ids) - encode(clip, "text", ids)
    return {"image": float(image.abs().max()), "text": float(text.abs().max())}


def export_open_clip(
    model: JointModel, cfg: Config, prep: Preprocessing, out: Path
) -> dict[str, Any]:
    """OUT/open_clip_config.json and OUT/open_clip_model.safetensors, which
    open_clip.create_model("local-dir:OUT") loads; checked by loading them back."""
    import open_clip
    from safetensors.torch import save_file

    from polymodal.towers.openclip import is_custom_text, to_open_clip

    if set(cfg.model.modalities) != {"image", "text"} or {
        cfg.model.section(m).encoder for m in ("image", "text")
    } != {"open_clip"}:
        raise ValueError(
            "--format open_clip: only image-text models whose towers came from OpenCLIP "
            "(polymodal import open_clip)"
        )
    oc = cfg.model.open_clip
    state = to_open_clip(model.state_dict(), is_custom_text(oc.model_cfg))
    out.mkdir(parents=True, exist_ok=True)
    preprocess = {
        "size": prep.image_size,
        "mean": prep.image_mean,
        "std": prep.image_std,
        "resize_mode": prep.image_resize,
        "interpolation": prep.image_interpolation,
    }
    config = {"model_cfg": oc.model_cfg, "preprocess_cfg": preprocess}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_file(
        {k: v.detach().contiguous() for k, v in state.items()}, out / "open_clip_model.safetensors"
    )
    clip = open_clip.create_model(f"local-dir:{out}").eval()
    return embedding_differences(model, clip, prep)
