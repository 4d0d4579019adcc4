"""Plain multilayer perceptrons, and the MLP encoder/decoder of the 2-D and MNIST VAEs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (relu, tanh, elu, gelu)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """Linear -> act -> ... -> Linear, flattening any input to [B, in_features].

    Args:
        in_features: size of one (flattened) input.
        hidden: hidden layer sizes (may be empty: a single linear map).
        out_features: output size.
        act: activation name between layers.
        out_shape: optional shape the [B, out_features] output is viewed as.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        act: str = "relu",
        out_shape: Sequence[int] | None = None,
    ) -> None:
        sizes = [int(in_features), *(int(h) for h in hidden), int(out_features)]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation(act))
        super().__init__(*layers)
        self.in_features = sizes[0]
        self.out_shape = tuple(out_shape) if out_shape is not None else (sizes[-1],)
        if math.prod(self.out_shape) != sizes[-1]:
            raise ValueError(f"out_shape {self.out_shape} does not hold {sizes[-1]} outputs")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, ...] (flattened to [B, in_features]) -> [B, *out_shape]."""
        return super().forward(x.flatten(1)).view(x.shape[0], *self.out_shape)


class MLPEncoder(MLP):
    """[B, *input_shape] (flattened) -> [B, out_features] through `hidden` layers."""

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
    ) -> None:
        super().__init__(math.prod(input_shape), hidden, out_features, activation)


class MLPDecoder(MLP):
    """[B, in_features] -> [B, *output_shape] through `hidden` layers (in this order)."""

    def __init__(
        self,
        in_features: int,
        output_shape: Sequence[int],
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
    ) -> None:
        out = math.prod(output_shape)
        super().__init__(in_features, hidden, out, activation, out_shape=output_shape)
