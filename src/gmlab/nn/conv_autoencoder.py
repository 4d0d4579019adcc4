"""Convolutional encoder/decoder for square images (vae-pytorch's architecture).

Encoder: conv3x3(C -> channels[0]) then a stride-2 conv3x3 per further entry of `channels`
(32x32 -> 4x4 with the default four), ReLU after each, flatten, linear to `out_features`.
Decoder: the mirror image: linear z -> channels[-1] x 4 x 4, stride-2 transposed 4x4 convs
back up, ReLU after each, conv3x3 to the output channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def _grid(image_shape: Sequence[int], n_down: int) -> int:
    """Side of the smallest feature map of a [C, S, S] image halved `n_down` times."""
    if len(image_shape) != 3 or image_shape[1] != image_shape[2]:
        raise ValueError(f"the conv networks take square [C, H, W] images, got {image_shape}")
    side = int(image_shape[1])
    if side % 2**n_down:
        raise ValueError(
            f"image side {side} is not divisible by 2^{n_down} (one halving per channel step)"
        )
    return side // 2**n_down


class ConvEncoder(nn.Module):
    """[B, C, S, S] -> [B, out_features].

    Args:
        input_shape: (C, S, S).
        out_features: output size (2 * latent size for a Gaussian posterior).
        channels: conv widths; each entry after the first halves the side.
        channels_last: run in the channels-last memory format (faster on CPU).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        side = _grid(input_shape, len(channels) - 1)
        layers: list[nn.Module] = [
            nn.Conv2d(int(input_shape[0]), channels[0], 3, 1, 1),
            nn.ReLU(inplace=True),
        ]
        for a, b in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.Conv2d(a, b, 3, 2, 1), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(channels[-1] * side * side, int(out_features))
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.fc(self.net(x).flatten(1))


class ConvDecoder(nn.Module):
    """[B, in_features] -> [B, *output_shape], output_shape = (P, C, S, S) or (C, S, S).

    Args:
        in_features: latent size.
        output_shape: the decoder's output per sample; its last three dims are the image.
        channels: the encoder's conv widths (used in reverse).
        channels_last: run in the channels-last memory format (faster on CPU).
    """

    def __init__(
        self,
        in_features: int,
        output_shape: Sequence[int],
        channels: Sequence[int] = (32, 64, 128, 256),
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.output_shape = tuple(int(s) for s in output_shape)
        channels = [int(c) for c in reversed(channels)]
        self.base = _grid(self.output_shape[-3:], len(channels) - 1)
        self.top = channels[0]
        self.fc = nn.Linear(int(in_features), channels[0] * self.base * self.base)
        layers: list[nn.Module] = [nn.ReLU(inplace=True)]
        for a, b in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1), nn.ReLU(inplace=True)]
        out_channels = math.prod(self.output_shape[:-2])
        layers.append(nn.Conv2d(channels[-1], out_channels, 3, 1, 1))
        self.net = nn.Sequential(*layers)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.top, self.base, self.base)
        return self.net(h).reshape(z.shape[0], *self.output_shape)
