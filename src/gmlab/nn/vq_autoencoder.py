"""Convolutional encoder/decoder of the VQ-VAE (van den Oord et al. 2017, CIFAR-10).

Encoder: `downsample` stride-2 4x4 convs (C -> hidden), a 3x3 conv, `res_blocks` residual
blocks (ReLU, 3x3 conv, ReLU, 1x1 conv, added to the input), a 1x1 conv to the code
dimension D: [B, C, H, W] -> [B, D, H / 2^s, W / 2^s] (32x32 -> 8x8 with s = 2).
Decoder, mirrored: 3x3 conv D -> hidden, residual blocks, `downsample` stride-2 4x4
transposed convs back to full size with `out_channels` (the likelihood's parameters).
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), channels unchanged."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def residual_stack(channels: int, blocks: int) -> list[nn.Module]:
    """`blocks` residual blocks followed by a ReLU."""
    return [*(ResidualBlock(channels) for _ in range(blocks)), nn.ReLU()]


class VQEncoder(nn.Sequential):
    """[B, in_channels, H, W] -> [B, dim, H / 2^downsample, W / 2^downsample]."""

    def __init__(
        self,
        in_channels: int,
        dim: int,
        hidden: int = 256,
        downsample: int = 2,
        res_blocks: int = 2,
    ) -> None:
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(downsample):
            layers += [nn.Conv2d(channels, hidden, 4, 2, 1), nn.ReLU()]
            channels = hidden
        layers.append(nn.Conv2d(channels, hidden, 3, 1, 1))
        layers += residual_stack(hidden, res_blocks)
        layers.append(nn.Conv2d(hidden, dim, 1))
        super().__init__(*layers)


class VQDecoder(nn.Sequential):
    """[B, dim, h, w] -> [B, out_channels, h 2^downsample, w 2^downsample]."""

    def __init__(
        self,
        dim: int,
        out_channels: int,
        hidden: int = 256,
        downsample: int = 2,
        res_blocks: int = 2,
    ) -> None:
        layers: list[nn.Module] = [nn.Conv2d(dim, hidden, 3, 1, 1)]
        layers += residual_stack(hidden, res_blocks)
        for i in range(downsample):
            last = i == downsample - 1
            layers.append(nn.ConvTranspose2d(hidden, out_channels if last else hidden, 4, 2, 1))
            if not last:
                layers.append(nn.ReLU())
        if downsample == 0:
            layers.append(nn.Conv2d(hidden, out_channels, 3, 1, 1))
        super().__init__(*layers)
