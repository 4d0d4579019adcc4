"""Decoder likelihoods p(x | z) of the VAE family (and the VQ-VAE's decoder).

Each takes decoder outputs `params` of shape [..., P, *event_shape] (P = `num_params`)
and model-space data x of shape [..., *event_shape] (broadcasting over leading dims) and
returns log p(x | z) summed over the event: a density in model space (continuous data), or
a log-pmf (`BernoulliLikelihood` on binarized data). Adding the preprocessor's log-det
turns a model-space density into the unit-cube density of the bits/dim convention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gmlab.distributions.normal import LOG_2PI


class EventSpace:
    """What a likelihood knows of the data, supplied by the model (a plain object, so that
    Hydra hands it over as it is).

    Attributes:
        event_dims: trailing dims of one sample (1 for points, 3 for images).
        low, high: the model-space range of the data.
        num_levels: pixel levels of the raw data (bins of the discretized logistic).
    """

    def __init__(
        self, event_dims: int, low: float = 0.0, high: float = 1.0, num_levels: int = 256
    ) -> None:
        self.event_dims = int(event_dims)
        self.low, self.high = float(low), float(high)
        self.num_levels = int(num_levels)

    def __repr__(self) -> str:
        return (
            f"EventSpace(event_dims={self.event_dims}, low={self.low}, high={self.high}, "
            f"num_levels={self.num_levels})"
        )


class Likelihood(nn.Module):
    """Base class, built with the model's `EventSpace` (`space`)."""

    num_params: int = 1

    def __init__(self, space: EventSpace) -> None:
        super().__init__()
        self.space = space
        self.event_dims = int(space.event_dims)

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        return t.sum(tuple(range(-self.event_dims, 0)))

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return params.unbind(-self.event_dims - 1)

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The decoder mean (samples 'without decoder noise')."""
        raise NotImplementedError

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli pixels with logits."""

    def log_prob(self, x, params):
        (logits,) = self._split(params)
        logits, x = torch.broadcast_tensors(logits, x)
        return -self._sum(F.binary_cross_entropy_with_logits(logits, x, reduction="none"))

    def mean(self, params):
        return torch.sigmoid(self._split(params)[0])

    def sample(self, params):
        return torch.bernoulli(self.mean(params))


class GaussianLikelihood(Likelihood):
    """Diagonal Gaussian: learned log-variance per dimension, or N(mean, std^2 I) with a
    fixed std.

    Args:
        space: the model's `EventSpace`.
        learn_variance: decoder outputs (mean, log-variance); else only the mean.
        std: the fixed standard deviation when `learn_variance` is False.
        min_logvar: floor of the learned log-variance.
    """

    def __init__(
        self,
        space: EventSpace,
        learn_variance: bool = True,
        std: float = 1.0,
        min_logvar: float = -10.0,
    ) -> None:
        super().__init__(space)
        self.learn_variance = bool(learn_variance)
        self.num_params = 2 if self.learn_variance else 1
        self.std = float(std)
        self.min_logvar = float(min_logvar)

    def _mean_logvar(self, params):
        if self.learn_variance:
            mean, raw = self._split(params)
            return mean, raw.clamp_min(self.min_logvar)
        return self._split(params)[0], None

    def log_prob(self, x, params):
        mean, logvar = self._mean_logvar(params)
        if logvar is None:
            var = self.std**2
            per_dim = (x - mean).square() / var + math.log(var) + LOG_2PI
        else:
            per_dim = (x - mean).square() * torch.exp(-logvar) + logvar + LOG_2PI
        return -0.5 * self._sum(per_dim)

    def mean(self, params):
        return self._mean_logvar(params)[0]

    def sample(self, params):
        mean, logvar = self._mean_logvar(params)
        std = self.std if logvar is None else torch.exp(0.5 * logvar)
        return mean + std * torch.randn_like(mean)


class DiscretizedLogisticLikelihood(Likelihood):
    """Logistic mass over the space's `num_levels` equal bins of its [low, high] (PixelCNN++
    style edges), as a model-space density.

    A continuous (dequantized) input falls in bin floor((x - low) / width); the first and
    last bins take the tails. log p(x) = log P(bin) - log(width), so with the
    preprocessor's log-det the bits/dim equal -log2 P(bin) / D.
    """

    num_params = 2

    def __init__(self, space: EventSpace, min_log_scale: float = -7.0) -> None:
        super().__init__(space)
        self.num_levels = int(space.num_levels)
        self.low, self.high = float(space.low), float(space.high)
        self.width = (self.high - self.low) / self.num_levels
        self.min_log_scale = float(min_log_scale)

    def log_prob(self, x, params):
        mean, raw = self._split(params)
        log_scale = raw.clamp_min(self.min_log_scale)
        index = torch.floor((x - self.low) / self.width).clamp(0, self.num_levels - 1)
        centre = self.low + (index + 0.5) * self.width
        inv_s = torch.exp(-log_scale)
        plus = (centre - mean + 0.5 * self.width) * inv_s
        minus = (centre - mean - 0.5 * self.width) * inv_s
        log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus)
        log_one_minus_cdf_minus = -F.softplus(minus)  # log (1 - sigmoid(minus))
        mid = (centre - mean) * inv_s
        cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        log_mid = torch.where(
            cdf_delta > 1e-5,
            torch.log(cdf_delta.clamp_min(1e-12)),
            # density at the centre times the bin width, where the difference underflows
            mid - log_scale - 2.0 * F.softplus(mid) + math.log(self.width),
        )
        log_mass = torch.where(
            index <= 0,
            log_cdf_plus,
            torch.where(index >= self.num_levels - 1, log_one_minus_cdf_minus, log_mid),
        )
        return self._sum(log_mass) - self._event_size(log_mass) * math.log(self.width)

    def _event_size(self, t: torch.Tensor) -> int:
        return math.prod(t.shape[-self.event_dims :])

    def mean(self, params):
        return self._split(params)[0].clamp(self.low, self.high)

    def sample(self, params):
        mean, raw = self._split(params)
        u = torch.rand_like(mean).clamp(1e-5, 1 - 1e-5)
        x = mean + raw.clamp_min(self.min_log_scale).exp() * (torch.log(u) - torch.log1p(-u))
        return x.clamp(self.low, self.high)
