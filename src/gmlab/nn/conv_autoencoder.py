"""Convolutional encoder/decoder for 32x32 images (the vae-pytorch seed's architecture).

Encoder: conv3x3(C->32) then stride-2 conv3x3 32->64->128->256 (32x32 -> 4x4), ReLU after
each, flatten, linear to `out_features` (2 * latent size: mean and log-variance).
Decoder: linear z -> 256 x 4 x 4, three stride-2 transposed 4x4 convs 256->128->64->32
(4x4 -> 32x32), ReLU after each, conv3x3 32 -> `out_channels`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ConvEncoder(nn.Module):
    """[B, C, 32, 32] -> [B, out_features]."""

    def __init__(
        self,
        in_channels: int,
        out_features: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        image_size: int = 32,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels[0], 3, 1, 1),
            nn.ReLU(inplace=True),
        ]
        size = image_size
        for a, b in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.Conv2d(a, b, 3, 2, 1), nn.ReLU(inplace=True)]
            size //= 2
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(channels[-1] * size * size, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).flatten(1))


class ConvDecoder(nn.Module):
    """[B, in_features] -> [B, out_channels, 32, 32]."""

    def __init__(
        self,
        in_features: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        image_size: int = 32,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in reversed(channels)]  # 256, 128, 64, 32
        self.base = image_size // 2 ** (len(channels) - 1)
        self.top = channels[0]
        self.fc = nn.Linear(in_features, channels[0] * self.base * self.base)
        layers: list[nn.Module] = [nn.ReLU(inplace=True)]
        for a, b in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(channels[-1], out_channels, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.top, self.base, self.base)
        return self.net(h)
