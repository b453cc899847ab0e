"""Decoders from the shared embedding back to each modality, for reconstruction."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ImageDecoder(nn.Module):
    """Embedding → [C, S, S] in [0, 1]: a 1/4-size feature map upsampled twice."""

    def __init__(self, embed_dim: int, channels: int, size: int, width: int = 32):
        super().__init__()
        self.size = size
        self.base = max(size // 4, 1)
        self.width = width * 2
        self.fc = nn.Linear(embed_dim, self.width * self.base * self.base)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(self.width, width, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc(z)).view(-1, self.width, self.base, self.base)
        x = self.net(x)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


class TextDecoder(nn.Module):
    """Embedding → token logits [L, vocab] for every position at once."""

    def __init__(self, embed_dim: int, max_len: int, vocab: int, width: int = 64):
        super().__init__()
        self.max_len = max_len
        self.hidden = nn.Sequential(nn.Linear(embed_dim, max_len * width), nn.GELU())
        self.width = width
        self.out = nn.Linear(width, vocab)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.hidden(z).view(-1, self.max_len, self.width)
        return self.out(h)


class MelDecoder(nn.Module):
    """Embedding → a [1, n_mels, frames] log-mel spectrogram (unbounded: MSE targets)."""

    def __init__(self, embed_dim: int, n_mels: int, frames: int, width: int = 16):
        super().__init__()
        self.shape = (n_mels, frames)
        self.base = (max(n_mels // 4, 1), max(frames // 4, 1))
        self.width = width * 2
        self.fc = nn.Linear(embed_dim, self.width * self.base[0] * self.base[1])
        self.net = nn.Sequential(
            nn.ConvTranspose2d(self.width, width, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc(z)).view(-1, self.width, *self.base)
        x = self.net(x)
        if tuple(x.shape[-2:]) != self.shape:
            x = F.interpolate(x, size=self.shape, mode="bilinear", align_corners=False)
        return x


class VectorDecoder(nn.Module):
    """Embedding → the standardised feature vector [dim] (MSE targets)."""

    def __init__(self, embed_dim: int, dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
