"""Image encoders: a small CNN (default, fast on CPU) and torchvision ResNet-18 from scratch."""

from __future__ import annotations

import torch
from torch import nn

# BatchNorm couples the rows of a batch; GroupNorm is per sample (exact under grad cache).
NORMS = {
    "batch": lambda c: nn.BatchNorm2d(c),
    "group": lambda c: nn.GroupNorm(min(8, c), c),
}


def _block(c_in: int, c_out: int, stride: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        NORMS[norm](c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Four conv blocks, two stride-2 downsamples, global average pool."""

    def __init__(self, channels: int, width: int = 32, norm: str = "batch"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"model.image.norm: unknown '{norm}' ({sorted(NORMS)})")
        self.out_dim = width * 4
        self.net = nn.Sequential(
            _block(channels, width, 1, norm),
            _block(width, width * 2, 2, norm),
            _block(width * 2, width * 2, 1, norm),
            _block(width * 2, width * 4, 2, norm),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last feature map as a grid of patches [B, H, W, C] and their mask, all True;
        their mean is forward(x)."""
        features = self.net[:4](x).permute(0, 2, 3, 1)
        return features, features.new_ones(features.shape[:3], dtype=torch.bool)

    @staticmethod
    def pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return tokens.mean((1, 2))


class ResNet18(nn.Module):
    """torchvision ResNet-18 with random init; a 3x3 stem keeps resolution for small images."""

    def __init__(self, channels: int, width: int = 64):
        super().__init__()
        # Imported here: torchvision takes 1.3 s to import, which every load of a small_cnn
        # model (the default; a serving replica's first request) would otherwise pay.
        import torchvision

        net = torchvision.models.resnet18(weights=None)
        net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
