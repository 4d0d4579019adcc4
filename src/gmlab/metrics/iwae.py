"""The importance-weighted bound (Burda et al. 2016), streamed over chunks of samples.

    log p(x) >= L_k = E[ log (1/k) sum_{i=1..k} w_i ],  w_i = p(x, z_i) / q(z_i | x),

with L_1 the ELBO and L_k increasing to log p(x) as k grows. The k log-weights are drawn in
chunks and combined by a running logsumexp, so memory stays that of one chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def iwae_bound(
    log_weights: Callable[[int], torch.Tensor], k: int, chunk_size: int | None = None
) -> torch.Tensor:
    """L_k per input.

    Args:
        log_weights: n -> [n, B] log-weights of n fresh posterior samples per input.
        k: number of importance samples (>= 1).
        chunk_size: samples drawn per call (default: all k at once).

    Returns:
        [B] log (1/k) sum_i w_i.
    """
    if k < 1:
        raise ValueError(f"the IWAE bound needs k >= 1 samples, got {k}")
    chunk_size = max(1, min(chunk_size or k, k))
    total: torch.Tensor | None = None
    done = 0
    while done < k:
        n = min(chunk_size, k - done)
        part = torch.logsumexp(log_weights(n), 0)
        total = part if total is None else torch.logaddexp(total, part)
        done += n
    return total - math.log(k)
