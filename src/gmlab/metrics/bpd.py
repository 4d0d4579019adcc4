"""Bits per dimension: the one convention every density model in gmlab reports.

Images are integers x in {0..255}^D. A model sees y = (x + u) / 256, u ~ U[0,1)^D, or a
fixed transform of y whose log-det-Jacobian it adds back, so that `log p(y)` is a
density on the unit cube [0,1]^D. Then

    bpd = ( -log p(y) + D ln 256 ) / ( D ln 2 )

which equals -log2 P(x) / D for the discrete model P(x) = integral of p over x's bin
(up to the dequantization gap, so the bpd is an upper bound on the discrete one).
"""

import math

import torch


def bits_per_dim(log_density: torch.Tensor, num_dims: int, num_levels: int = 256) -> torch.Tensor:
    """Bits/dim of a log-density on the unit cube.

    Args:
        log_density: [...] natural-log density log p(y) of y in [0,1]^D (nats).
        num_dims: D, the number of dimensions of one sample.
        num_levels: integer levels per dimension of the raw data (256 for 8-bit images).

    Returns:
        [...] bits/dim, (-log p(y) + D ln num_levels) / (D ln 2).

    The uniform density on the unit cube (log p = 0) gives 8 bits/dim for 8-bit data; a
    density twice as high in each of the D dimensions saves one bit per dimension:

    >>> import math, torch
    >>> bits_per_dim(torch.tensor(0.0), num_dims=784)
    tensor(8.)
    >>> bits_per_dim(torch.tensor(784 * math.log(2.0)), num_dims=784)
    tensor(7.)
    """
    return (-log_density + num_dims * math.log(num_levels)) / (num_dims * math.log(2.0))


def nats_to_bits(log_pmf: torch.Tensor, num_dims: int) -> torch.Tensor:
    """Bits/dim of a log-probability mass (discrete data, e.g. binarized MNIST): -log2 P / D."""
    return -log_pmf / (num_dims * math.log(2.0))
