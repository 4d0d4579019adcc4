"""K-means in torch, batched and on the data's device (CPU or GPU).

    centers, labels = kmeans(x, k)               # x [N, d] -> centers [k, d], labels [N]
    labels, sq_dist = assign(x, centers)         # nearest center and squared distance
    centers = kmeans_plusplus(x, k, seed=0)      # greedy k-means++ seeding only

Design:

* Squared distances are ||x||^2 - 2 x c^T + ||c||^2, computed over chunks of rows so
  that at most `chunk_size x k` distances exist at once (no N x k x d tensor, and no
  N x k tensor unless it fits the budget). The default chunk keeps one chunk's
  distances plus its rows under 2^20 elements (4 MiB in float32, cache-sized) on CPUs
  and 2^25 (128 MiB) on GPUs.
* Float32 stability: every chunk is shifted by the data mean before the expansion
  (cancellation in ||x||^2 - 2 x c + ||c||^2 grows with the distance from the origin, so
  pixel data in [0, 255] would otherwise lose digits); distances are clamped at 0.
  Cluster sums are accumulated in float64.
* k-means++ is sklearn's greedy variant (2 + floor(ln k) candidates per step, keep the
  one that lowers the potential most); each step is one vectorised pass over the data.
  Candidates are drawn by inverse-CDF sampling on a float64 cumulative sum (no
  `torch.multinomial` category limit).
* Empty clusters are re-seeded, as in scikit-learn, from the points farthest from
  their centers (those points are moved out of their old clusters' sums).
* Deterministic given `seed` on a given device: a private `torch.Generator` on that
  device, and on CUDA the cluster sums use a one-hot matmul instead of atomic adds.
* `tol=0` (default) iterates until no label changes or `n_iter`; `tol=1e-4` is sklearn's
  default stopping rule (squared center shift <= tol * mean per-dimension variance).

Integer inputs (uint8 images) are read as float32; float64 inputs stay float64.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from gmlab.ops.chunks import chunk_rows, distance_budget

__all__ = ["assign", "kmeans", "kmeans_plusplus", "inertia"]


def _work_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float32


def _check_x(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"k-means expects x of shape [N, d], got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("k-means needs at least one point (x has N = 0 rows)")
    return x


def _check_k(x: Tensor, k: int) -> None:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > x.shape[0]:
        raise ValueError(
            f"k = {k} clusters requested but x has only N = {x.shape[0]} points; "
            "k-means needs k <= N"
        )


def _chunk_rows(n: int, k: int, d: int, chunk_size: int | None, device: torch.device) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return min(int(chunk_size), n)
    return chunk_rows(n, k + d, distance_budget(device))


def _mean(x: Tensor, rows: int) -> Tensor:
    """Column mean of x, accumulated chunk-wise in float64 (the shift used for stability)."""
    acc = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], rows):
        acc += x[i : i + rows].to(torch.float64).sum(0)
    return (acc / x.shape[0]).to(_work_dtype(x))


def _partial_dist(xc: Tensor, c: Tensor, c_sq: Tensor) -> Tensor:
    """[n, k] ||c||^2 - 2 x.c for shifted rows xc and centers c: the squared distance
    less ||x||^2, which does not change the argmin (added back only to the minimum)."""
    return torch.addmm(c_sq.unsqueeze(0), xc, c.T, beta=1.0, alpha=-2.0)


def _nearest(xc: Tensor, c: Tensor, c_sq: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest center index and squared distance ([n] each) of shifted rows xc."""
    mn, idx = _partial_dist(xc, c, c_sq).min(1)
    return (mn + (xc * xc).sum(1)).clamp_min_(0.0), idx


class _Blocks:
    """Runs fn(lo, hi) over row ranges covering [0, n): one range on GPUs or with one
    torch thread; on CPUs with T > 1 threads, T contiguous ranges in a thread pool with
    torch's intra-op threads set to 1 meanwhile (as scikit-learn parallelises Lloyd over
    chunks: one join per pass instead of a barrier per small op, which matters when the
    cores are shared). Results come back in range order, so sums are deterministic."""

    def __init__(self, n: int, rows: int, device: torch.device) -> None:
        self.threads = torch.get_num_threads() if device.type == "cpu" else 1
        blocks = self.threads if n >= 256 * self.threads else 1
        step = -(-n // max(blocks, 1))
        self.ranges = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
        self.pool = None
        if len(self.ranges) > 1:
            self.pool = ThreadPoolExecutor(len(self.ranges), thread_name_prefix="kmeans")
            torch.set_num_threads(1)

    def map(self, fn):
        if self.pool is None:
            return [fn(lo, hi) for lo, hi in self.ranges]
        return list(self.pool.map(lambda r: fn(*r), self.ranges))

    def __enter__(self) -> _Blocks:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            torch.set_num_threads(self.threads)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def assign(x: Tensor, centers: Tensor, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Nearest center of every row.

    Args:
        x: [N, d] points.
        centers: [k, d] centers (moved to x's device and working dtype).
        chunk_size: rows per chunk (default: 4 MiB of work memory on CPU, 128 MiB on GPU).

    Returns:
        labels [N] int64 and sq_dist [N] (squared Euclidean distance to that center, in
        x's working dtype).
    """
    x = _check_x(x)
    dt = _work_dtype(x)
    centers = torch.as_tensor(centers).to(device=x.device, dtype=dt)
    if centers.dim() != 2 or centers.shape[1] != x.shape[1]:
        raise ValueError(f"centers must be [k, {x.shape[1]}], got {tuple(centers.shape)}")
    n, d = x.shape
    rows = _chunk_rows(n, centers.shape[0], d, chunk_size, x.device)
    shift = _mean(x, rows)
    c = centers - shift
    c_sq = (c * c).sum(1)
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    sq = torch.empty(n, dtype=dt, device=x.device)

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi, rows):
            j = min(i + rows, hi)
            sq[i:j], labels[i:j] = _nearest(x[i:j].to(dt) - shift, c, c_sq)

    with _Blocks(n, rows, x.device) as blocks:
        blocks.map(work)
    return labels, sq


def inertia(x: Tensor, centers: Tensor, chunk_size: int | None = None) -> float:
    """Sum of squared distances of the rows to their nearest center (sklearn's inertia_)."""
    _, sq = assign(x, centers, chunk_size)
    return float(sq.double().sum())


def _plusplus(x: Tensor, k: int, seed: int, rows: int, shift: Tensor, blocks: _Blocks) -> Tensor:
    """Greedy k-means++ on the shifted problem; returns shifted centers [k, d]."""
    n, d = x.shape
    dt = shift.dtype
    g = _generator(x.device, seed)
    n_trials = 2 + int(math.log(k))
    centers = torch.empty(k, d, dtype=dt, device=x.device)

    def dists_to(c: Tensor) -> Tensor:  # [N, m] squared distances to m shifted centers
        c_sq = (c * c).sum(1)
        out = torch.empty(n, c.shape[0], dtype=dt, device=x.device)

        def work(lo: int, hi: int) -> None:
            for i in range(lo, hi, rows):
                j = min(i + rows, hi)
                xc = x[i:j].to(dt) - shift
                d2 = _partial_dist(xc, c, c_sq).add_((xc * xc).sum(1, keepdim=True))
                out[i:j] = d2.clamp_min_(0.0)

        blocks.map(work)
        return out

    first = torch.randint(n, (1,), generator=g, device=x.device)
    centers[0] = x[first[0]].to(dt) - shift
    closest = dists_to(centers[:1])[:, 0]
    for j in range(1, k):
        weights = closest.double()
        cdf = torch.cumsum(weights, 0)
        total = cdf[-1]
        u = torch.rand(n_trials, generator=g, device=x.device, dtype=torch.float64)
        if bool(total > 0):
            cand = torch.searchsorted(cdf, u * total, right=True).clamp_(max=n - 1)
        else:  # every point coincides with a center already: draw uniformly
            cand = (u * n).long().clamp_(max=n - 1)
        c = x[cand].to(dt) - shift
        d_c = torch.minimum(dists_to(c), closest.unsqueeze(1))  # [N, n_trials]
        best = int(d_c.double().sum(0).argmin())
        centers[j] = c[best]
        closest = d_c[:, best].contiguous()
    return centers


def kmeans_plusplus(x: Tensor, k: int, seed: int = 0, chunk_size: int | None = None) -> Tensor:
    """Greedy k-means++ seeding (sklearn's algorithm, torch RNG): [k, d] centers, rows of x."""
    x = _check_x(x)
    _check_k(x, k)
    rows = _chunk_rows(x.shape[0], 2 + int(math.log(k)), x.shape[1], chunk_size, x.device)
    shift = _mean(x, rows)
    with _Blocks(x.shape[0], rows, x.device) as blocks:
        return _plusplus(x, k, seed, rows, shift, blocks) + shift


def kmeans(
    x: Tensor,
    k: int,
    n_iter: int = 20,
    init: str | Tensor = "k-means++",
    seed: int = 0,
    chunk_size: int | None = None,
    tol: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means.

    Args:
        x: [N, d] points (any float or integer dtype, any device; everything runs there).
        k: number of clusters, 1 <= k <= N (ValueError otherwise).
        n_iter: maximum Lloyd iterations; stops early when no label changes (or when the
            total squared center shift is <= tol * mean per-dim variance, sklearn's rule,
            if tol > 0).
        init: "k-means++" (greedy, sklearn's variant), "random" (k distinct rows drawn
            uniformly), or a [k, d] tensor of initial centers.
        seed: RNG seed of the initialisation; results are deterministic given it.
        chunk_size: rows per distance chunk (default: 4 MiB of work memory on CPU,
            128 MiB on GPU).
        tol: relative center-shift tolerance (0: only stop on unchanged labels).

    Returns:
        centers [k, d] (x's working dtype) and labels [N] int64, with labels the nearest
        center of each row under the returned centers. Duplicated points or k larger than
        the number of distinct points give duplicated centers and empty clusters, never NaN.

    >>> import torch
    >>> x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 10.0], [10.0, 11.0]])
    >>> centers, labels = kmeans(x, 2, seed=0)
    >>> centers[centers[:, 0].argsort()], torch.bincount(labels)
    (tensor([[ 0.0000,  0.5000],
            [10.0000, 10.5000]]), tensor([2, 2]))
    >>> assign(torch.tensor([[1.0, 1.0]]), centers)[1]  # squared distance to (0, 0.5)
    tensor([1.2500])
    """
    x = _check_x(x)
    _check_k(x, k)
    n, d = x.shape
    dt = _work_dtype(x)
    dev = x.device
    rows = _chunk_rows(n, max(k, 2 + int(math.log(k))), d, chunk_size, dev)
    shift = _mean(x, rows)

    with _Blocks(n, rows, dev) as blocks:
        if isinstance(init, str):
            if init == "k-means++":
                c = _plusplus(x, k, seed, rows, shift, blocks)
            elif init == "random":
                g = _generator(dev, seed)
                idx = torch.randperm(n, generator=g, device=dev)[:k]
                c = x[idx].to(dt) - shift
            else:
                raise ValueError(
                    f"init must be 'k-means++', 'random' or a [k, d] tensor, got {init!r}"
                )
        else:
            c0 = torch.as_tensor(init)
            if tuple(c0.shape) != (k, d):
                raise ValueError(f"init centers must be [{k}, {d}], got {tuple(c0.shape)}")
            c = c0.to(device=dev, dtype=dt) - shift

        tol_abs = 0.0
        if tol > 0:
            var = torch.zeros(d, dtype=torch.float64, device=dev)
            for i in range(0, n, rows):
                var += ((x[i : i + rows].to(torch.float64) - shift.double()) ** 2).sum(0)
            tol_abs = float((var / n).mean()) * tol

        labels = torch.empty(n, dtype=torch.long, device=dev)
        sq = torch.empty(n, dtype=dt, device=dev)
        prev = None
        converged = False
        # cluster sums: a one-hot matmul on GPUs (deterministic, no atomics) and on CPUs when
        # rows are short (index_add_ has a large per-row cost there); index_add_ otherwise
        use_matmul = dev.type != "cpu" or d < 4 * k
        for _ in range(n_iter):
            c_sq = (c * c).sum(1)

            def lloyd(lo: int, hi: int, c=c, c_sq=c_sq) -> Tensor:
                part = torch.zeros(k, d, dtype=torch.float64, device=dev)
                for i in range(lo, hi, rows):
                    j = min(i + rows, hi)
                    xc = x[i:j].to(dt) - shift
                    sq[i:j], labels[i:j] = _nearest(xc, c, c_sq)
                    if use_matmul:
                        onehot = torch.nn.functional.one_hot(labels[i:j], k).to(dt)
                        part += (onehot.T @ xc).double()
                    else:
                        blk = torch.zeros(k, d, dtype=dt, device=dev)
                        part += blk.index_add_(0, labels[i:j], xc).double()
                return part

            sums = torch.stack(blocks.map(lloyd)).sum(0)
            if prev is not None and torch.equal(labels, prev):
                converged = True
                break  # converged: the update would reproduce c exactly
            counts = torch.bincount(labels, minlength=k).to(torch.float64)
            empty = torch.nonzero(counts == 0).flatten()
            if empty.numel() > 0:
                # sklearn's relocation: the farthest points become the empty clusters' centers
                far = torch.topk(sq, empty.numel()).indices
                far_x = (x[far].to(dt) - shift).double()
                old = labels[far]
                sums.index_add_(0, old, -far_x)
                counts.index_add_(0, old, -torch.ones_like(old, dtype=torch.float64))
                sums[empty] = far_x
                counts[empty] = 1.0
            nonzero = counts > 0
            new_c = c.double().clone()
            new_c[nonzero] = sums[nonzero] / counts[nonzero].unsqueeze(1)
            new_c = new_c.to(dt)
            shift_sq = float(((new_c.double() - c.double()) ** 2).sum())
            c = new_c
            prev = labels.clone()
            if tol > 0 and shift_sq <= tol_abs:
                break

        if not converged:  # labels of the returned centers (the loop's are one update behind)
            c_sq = (c * c).sum(1)

            def relabel(lo: int, hi: int, c=c, c_sq=c_sq) -> None:
                for i in range(lo, hi, rows):
                    j = min(i + rows, hi)
                    labels[i:j] = _partial_dist(x[i:j].to(dt) - shift, c, c_sq).argmin(1)

            blocks.map(relabel)
    return c + shift, labels
