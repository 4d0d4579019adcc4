"""Vector quantizer whose codebook follows exponential moving averages of its assignments.

van den Oord et al. 2017 (appendix), Razavi et al. 2019: with n_k the number of encoder
vectors assigned to code k in a batch (over all ranks) and s_k their sum,
    N_k <- decay N_k + (1 - decay) n_k,        m_k <- decay m_k + (1 - decay) s_k,
    e_k = m_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j
(Laplace smoothing keeps codes without assignments finite). The codebook takes no gradient:
the codebook loss is dropped and only the commitment term trains the encoder toward it.
"""

from __future__ import annotations

import torch

from gmlab.errors import ConfigError
from gmlab.nn.vector_quantizer import VectorQuantizer, all_reduce_sum


class EMAVectorQuantizer(VectorQuantizer):
    """`VectorQuantizer` (same init and revival options) with moving-average codebook updates.

    Args:
        decay: weight of the past in the moving averages, in [0, 1).
        eps: Laplace smoothing of the counts N_k.
    Every code starts as if chosen once (N_k = 1, m_k = e_k).
    """

    learned_by_gradient = False

    def __init__(
        self, num_codes: int, dim: int, decay: float = 0.99, eps: float = 1e-5, **options
    ) -> None:
        super().__init__(num_codes, dim, **options)
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"quantizer decay must be in [0, 1), got {decay}")
        if eps <= 0:
            raise ConfigError(f"quantizer eps must be > 0, got {eps}")
        self.decay, self.eps = float(decay), float(eps)
        self.register_buffer("cluster_size", torch.ones(self.num_codes))
        self.register_buffer("embed_sum", self.codebook.clone())

    def codebook_loss(self, z_q: torch.Tensor, z_e: torch.Tensor) -> torch.Tensor:
        return z_e.new_zeros(())

    @torch.no_grad()
    def update(self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, flat.to(self.embed_sum.dtype))
        sums = all_reduce_sum(sums)
        self.cluster_size.mul_(self.decay).add_(
            counts.to(self.cluster_size.dtype), alpha=1 - self.decay
        )
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps) * total
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

    def set_codes(self, index: torch.Tensor, vectors: torch.Tensor, counts: torch.Tensor) -> None:
        """Codes `index` := `vectors`, with N_k = max(counts, 1) and m_k = N_k e_k."""
        counts = counts.to(self.cluster_size.dtype).clamp_min(1.0)
        self.codebook[index] = vectors
        self.cluster_size[index] = counts
        self.embed_sum[index] = vectors * counts[:, None]
