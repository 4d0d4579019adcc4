"""Vector quantization of a feature map against a codebook (VQ-VAE), learned by gradient.

van den Oord et al. 2017: every D-vector z_e[b, :, h, w] of the encoder output is replaced
by its nearest codebook row e_k, k = argmin_j ||z_e - e_j||^2. Gradients skip the
non-differentiable lookup by the straight-through estimator z_e + (z_q - z_e).detach()
(forward value z_q, gradient of the identity); the codebook learns from
||sg[z_e] - z_q||^2 and the encoder is held near its codes by beta ||z_e - sg[z_q]||^2.
`gmlab.nn.ema_quantizer` learns the codebook by moving averages instead.

Both quantizers can start from k-means of the first training batch's encoder outputs and
re-seed codes left unused for a number of steps. Under torch.distributed the code counts,
the k-means data and the revival candidates are combined over all ranks, so every rank
keeps the same codebook.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from gmlab.errors import ConfigError
from gmlab.ops.kmeans import kmeans


class Quantized(NamedTuple):
    """Output of `VectorQuantizer.forward`.

    z: [B, D, H, W] the codes' vectors, straight-through (value z_q, gradient to z_e).
    codes: [B, H, W] long code indices.
    codebook_loss: mean of (z_q - sg[z_e])^2: moves a gradient codebook toward the encoder
        (zero for a moving-average codebook).
    commitment_loss: mean of (z_e - sg[z_q])^2: holds the encoder near its codes.
    counts: [K] how often each code was chosen, summed over all ranks.
    revived: number of dead codes re-seeded at this step (0 outside training).
    """

    z: torch.Tensor
    codes: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    counts: torch.Tensor
    revived: int


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over all ranks (x itself in one process)."""
    if distributed():
        x = x.clone()
        dist.all_reduce(x)
    return x


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """[N_r, ...] of every rank -> [sum N_r, ...] concatenated in rank order."""
    if not distributed():
        return x
    sizes = [
        torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())
    ]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    most = int(max(s.item() for s in sizes))
    padded = torch.zeros(most, *x.shape[1:], dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of a [K] histogram of codes: 1 when one code is used, K when all K are
    used equally often."""
    p = counts.double() / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum()).float()


class VectorQuantizer(nn.Module):
    """K codes of dimension D learned by gradient (vae-pytorch's: uniform init in [-1/K, 1/K]).

    Args:
        num_codes: K.
        dim: D.
        init: "uniform" (U(-1/K, 1/K)) or "kmeans": on the first training step the codebook
            becomes `gmlab.ops.kmeans` of that batch's encoder vectors (all ranks' vectors,
            in rank order; needs at least K of them).
        kmeans_iters: Lloyd iterations of the k-means init.
        dead_after: re-seed a code once no rank has chosen it for this many training steps
            (None: never).
        revive_from: "random" (distinct encoder vectors of the current batch drawn at random)
            or "farthest" (the vectors farthest from their nearest code).
        seed: seed of the k-means init and of the revival draws; the draws use a generator
            seeded from (seed, step), so they agree across ranks.
    """

    learned_by_gradient = True

    def __init__(
        self,
        num_codes: int,
        dim: int,
        init: str = "uniform",
        kmeans_iters: int = 10,
        dead_after: int | None = None,
        revive_from: str = "random",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if init not in ("uniform", "kmeans"):
            raise ConfigError(f"quantizer init must be uniform or kmeans, got {init!r}")
        if revive_from not in ("random", "farthest"):
            raise ConfigError(
                f"quantizer revive_from must be random or farthest, got {revive_from!r}"
            )
        if dead_after is not None and dead_after < 1:
            raise ConfigError(f"quantizer dead_after must be >= 1 or null, got {dead_after}")
        self.num_codes, self.dim = int(num_codes), int(dim)
        self.init, self.kmeans_iters = init, int(kmeans_iters)
        self.dead_after, self.revive_from, self.seed = dead_after, revive_from, int(seed)
        bound = 1.0 / self.num_codes
        codebook = torch.empty(self.num_codes, self.dim).uniform_(-bound, bound)
        if self.learned_by_gradient:
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
        self.register_buffer("initialized", torch.tensor(init == "uniform"))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("unused_steps", torch.zeros(self.num_codes, dtype=torch.long))

    # ---------------------------------------------------------------- lookup
    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """[B, D, H, W] -> [B, H, W] index of the nearest code."""
        codes, _ = self.nearest_rows(self.rows(z_e))
        return codes.view(z_e.shape[0], *z_e.shape[2:])

    def rows(self, z_e: torch.Tensor) -> torch.Tensor:
        """[B, D, H, W] -> [B H W, D] the vectors in (b, h, w) order."""
        return z_e.permute(0, 2, 3, 1).reshape(-1, self.dim)

    def nearest_rows(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, D] -> (nearest code [N], ||e_k||^2 - 2 z.e_k [N]: the squared distance less
        ||z||^2, which is the same for every k); one matrix product."""
        codebook = self.codebook.to(flat.dtype)
        scores = torch.addmm(codebook.square().sum(1), flat, codebook.T, alpha=-2.0)
        best, codes = scores.min(1)
        return codes, best

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """[B, H, W] code indices -> [B, D, H, W] their vectors."""
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2)

    # --------------------------------------------------------------- forward
    def forward(self, z_e: torch.Tensor) -> Quantized:
        """Quantize [B, D, H, W]; in training mode also init, update and revive the codebook."""
        flat = self.rows(z_e.detach())
        if self.training and not bool(self.initialized):
            self.kmeans_init(flat)
        codes, partial = self.nearest_rows(flat)
        z_q = F.embedding(codes, self.codebook).to(z_e.dtype)
        counts = torch.bincount(codes, minlength=self.num_codes)
        revived = 0
        if self.training:
            counts = all_reduce_sum(counts)
            self.update(flat, codes, counts)
            distance = partial + flat.square().sum(1)
            revived = self.revive(flat, distance, counts)
            self.steps += 1
        z_q = z_q.view(z_e.shape[0], *z_e.shape[2:], self.dim).permute(0, 3, 1, 2)
        return Quantized(
            z=z_e + (z_q - z_e).detach(),
            codes=codes.view(z_e.shape[0], *z_e.shape[2:]),
            codebook_loss=self.codebook_loss(z_q, z_e),
            commitment_loss=F.mse_loss(z_e, z_q.detach()),
            counts=counts,
            revived=revived,
        )

    def codebook_loss(self, z_q: torch.Tensor, z_e: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(z_q, z_e.detach())

    def update(self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        """Codebook update of a training step besides the gradient (none here)."""

    # ------------------------------------------------------- init and revival
    @torch.no_grad()
    def kmeans_init(self, flat: torch.Tensor) -> None:
        """Codebook := k-means centers of all ranks' vectors of this batch."""
        data = all_gather_rows(flat.float())
        if data.shape[0] < self.num_codes:
            raise ConfigError(
                f"quantizer init=kmeans needs at least {self.num_codes} encoder vectors in the "
                f"first batch, got {data.shape[0]}: raise the batch size or use init=uniform"
            )
        centers, labels = kmeans(data, self.num_codes, n_iter=self.kmeans_iters, seed=self.seed)
        self.set_codes(
            torch.arange(self.num_codes, device=flat.device),
            centers.to(self.codebook.dtype),
            torch.bincount(labels, minlength=self.num_codes).to(self.codebook.dtype),
        )
        self.initialized.fill_(True)

    def set_codes(self, index: torch.Tensor, vectors: torch.Tensor, counts: torch.Tensor) -> None:
        """Codes `index` := `vectors` ([M, D]), each as if chosen `counts` ([M]) times."""
        self.codebook.data[index] = vectors

    @torch.no_grad()
    def revive(self, flat: torch.Tensor, distance: torch.Tensor, counts: torch.Tensor) -> int:
        """Re-seed the codes unused for `dead_after` steps from this batch's vectors; returns
        how many. `distance` [N] is each vector's squared distance to its nearest code."""
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        if self.dead_after is None:
            return 0
        dead = torch.nonzero(self.unused_steps >= self.dead_after).flatten()
        m = dead.numel()  # the same on every rank: the counts are combined
        if m == 0:
            return 0
        local, local_score = self.candidates(flat, distance, m, self.generator(0))
        pool, score = all_gather_rows(local), all_gather_rows(local_score)
        if self.revive_from == "farthest":
            pick = torch.topk(score, m).indices
        else:
            pick = torch.randperm(pool.shape[0], generator=self.generator(1))[:m].to(pool.device)
        self.set_codes(dead, pool[pick].to(self.codebook.dtype), torch.ones(m, device=flat.device))
        self.unused_steps[dead] = 0
        return m

    def generator(self, stream: int) -> torch.Generator:
        """A CPU generator seeded from (seed, step, stream): the same on every rank."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + int(self.steps)) * 2 + stream)

    def candidates(
        self, flat: torch.Tensor, distance: torch.Tensor, m: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """m of this rank's vectors [m, D] and their scores [m] (distance, or 0 for random
        draws): the farthest, or distinct ones drawn at random (with repeats when N < m)."""
        n = flat.shape[0]
        if self.revive_from == "farthest":
            order = torch.argsort(distance, descending=True, stable=True)
        else:
            order = torch.randperm(n, generator=generator).to(flat.device)
        order = order[torch.arange(m, device=flat.device) % n]
        score = distance[order] if self.revive_from == "farthest" else torch.zeros(m)
        return flat[order], score.to(flat.device)
