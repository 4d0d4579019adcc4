"""NDB: the Number of statistically Different Bins (Richardson & Weiss, "On GANs and GMMs").

A sample-based test of mode collapse / mode dropping that works for any model that can
sample. K-means (K = 100 by default) on training samples defines K bins (the Voronoi
cells of the centers). A query set (model samples, or a held-out split) is binned by
nearest center, and for every bin a pooled two-proportion z-test compares the training
proportion with the query proportion; the bin is *different* when the two-tailed p-value
is below alpha (0.05). Reported: NDB (the count), NDB/K, and the Jensen-Shannon divergence
between the two bin histograms.

    from gmlab.metrics import NDB, ndb_score

    ndb = NDB(num_bins=100).fit(train)          # train: [N, ...] tensor/array, any shape
    res = ndb.evaluate(model.sample(10_000))    # same value range as train (e.g. pixels)
    res["ndb"], res["ndb_over_k"], res["js"]

    res = ndb_score(train, query, num_bins=100)   # one-shot

Conventions:

* Samples are flattened to [N, d]; training and query samples must be in the same value
  range (pixels in [0, 255], or whatever the training data uses). No rescaling happens
  unless `whitening=True`: then every dimension is standardised by the training
  samples' mean and std (plus 1e-6, so constant pixels stay finite) before binning.
  Whitening suits features of comparable reliability; on images it inflates nearly
  constant pixels (MNIST borders) into dominant, noisy dimensions, so it is off by default.
* When d > 1000 and `max_dims` is not given, d // 6 dimensions chosen at random (with
  `seed`) are used for binning, as in the original code (CelebA 64x64x3 -> 2048 dims).
  `max_dims=0` disables this and always uses every dimension.
* The training proportions are those of the training samples in their own K-means
  cells, and the pooled standard error uses both sample sizes, as in the original:
      p = (n1 p1 + n2 p2) / (n1 + n2),  z = (p1 - p2) / sqrt(p (1 - p) (1/n1 + 1/n2)),
      p-value = 2 * Phi(-|z|).
  A bin empty in both sets has z = 0, p-value 1.
* JS is in **nats** (natural log, bounded by ln 2), the unit of the paper's numbers
  (MNIST, K = 100: validation split NDB 0, JS 0.0014; test set NDB 4, JS 0.0041). It equals
  `scipy.spatial.distance.jensenshannon(p, q) ** 2`; divide by ln 2 for bits.
* Under the null hypothesis (query drawn from the training distribution) each bin is a
  false positive with probability ~alpha, so a perfect model still shows NDB/K ~ alpha on
  average; large query sets make the test sensitive to small differences.
* K-means runs in torch on the training samples' device (`device=` to move them, e.g.
  "cuda"); see `gmlab.ops.kmeans`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gmlab.ops.kmeans import assign, kmeans

__all__ = ["NDB", "ndb_score", "two_proportion_z_test", "js_divergence"]

_STD_EPS = 1e-6


def two_proportion_z_test(p1: Tensor, n1: int, p2: Tensor, n2: int) -> tuple[Tensor, Tensor]:
    """Pooled two-proportion z-test, elementwise over bins.

    Args:
        p1, p2: [K] proportions of the two samples in each bin.
        n1, n2: the two sample sizes.

    Returns:
        z [K] and two-tailed p-values [K] (float64). Where both proportions are 0 or both
        are 1 (zero pooled variance) z = 0 and the p-value is 1.
    """
    p1 = torch.as_tensor(p1, dtype=torch.float64)
    p2 = torch.as_tensor(p2, dtype=torch.float64)
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = torch.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    diff = p1 - p2
    z = torch.where(se > 0, diff / torch.where(se > 0, se, torch.ones_like(se)), 0.0)
    # 2 * Phi(-|z|) = erfc(|z| / sqrt(2)), accurate far into the tail
    p_values = torch.special.erfc(z.abs() / math.sqrt(2.0))
    return z, p_values


def js_divergence(p: Tensor, q: Tensor) -> float:
    """Jensen-Shannon divergence of two histograms, in nats (natural log; max ln 2).

    Histograms are normalised to sum 1 first. Equals scipy's `jensenshannon(p, q) ** 2`.
    """
    p = torch.as_tensor(p, dtype=torch.float64)
    q = torch.as_tensor(q, dtype=torch.float64)
    p = p / p.sum()
    q = q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: Tensor) -> Tensor:
        pos = a > 0
        return (a[pos] * torch.log(a[pos] / m[pos])).sum()

    return float(0.5 * (kl(p) + kl(q)))


def _as_2d(samples: Any) -> Tensor:
    """[N, ...] tensor or array -> [N, d] tensor (dtype and device kept)."""
    x = samples if isinstance(samples, Tensor) else torch.as_tensor(np.asarray(samples))
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"NDB expects samples of shape [N, ...] with N >= 1, got {tuple(x.shape)}")
    return x.detach().reshape(x.shape[0], -1)


def _mean_std(x: Tensor, rows: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-column mean and (population std + 1e-6) of x, accumulated chunk-wise in float64
    around a first-row shift (no float64 copy of x); returned as float32."""
    ref = x[0].double()
    s1 = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    s2 = torch.zeros_like(s1)
    for i in range(0, x.shape[0], rows):
        c = x[i : i + rows].double() - ref
        s1 += c.sum(0)
        s2 += (c * c).sum(0)
    n = x.shape[0]
    m = s1 / n
    var = (s2 / n - m * m).clamp_min(0.0)
    return (m + ref).float().cpu(), (var.sqrt() + _STD_EPS).float().cpu()


class NDB:
    """Number of statistically Different Bins between training samples and a query set.

    Args:
        num_bins: K, the number of K-means bins (default 100, as in the paper).
        alpha: significance level of each bin's two-tailed z-test (default 0.05).
        whitening: standardise every dimension by the training mean/std before binning.
        max_dims: bin on at most this many randomly chosen dimensions. None (default):
            d // 6 when d > 1000, else all; 0: always all dimensions.
        z_threshold: if given, a bin is different when |z| > z_threshold (the original
            code's alternative to alpha); p-values are still reported.
        n_iter, tol: K-means iteration limit and relative center-shift tolerance (default
            100 and 1e-4: scikit-learn's `KMeans(max_iter=100)`, as in the original code).
        seed: seed of the K-means initialisation and of the random dimension choice.
        device: device to bin on (default: the training samples' device).
        chunk_size: rows per distance chunk of the K-means (default: see gmlab.ops.kmeans).

    After `fit(train)`: `centers_` [K, d_used], `train_proportions_` [K], `num_train_`,
    `dims_` (LongTensor of used dimensions, or None for all), `mean_`/`std_` (whitening).

    A sample against itself has no different bin; one that drops a mode, every bin:

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> train = torch.cat([torch.randn(500, 2) - 5, torch.randn(500, 2) + 5])
    >>> ndb = NDB(num_bins=10).fit(train)
    >>> same = ndb.evaluate(train)
    >>> same["ndb"], same["js"], ndb.evaluate(train[:500])["ndb_over_k"]
    (0, 0.0, 1.0)
    """

    def __init__(
        self,
        num_bins: int = 100,
        alpha: float = 0.05,
        whitening: bool = False,
        max_dims: int | None = None,
        z_threshold: float | None = None,
        n_iter: int = 100,
        tol: float = 1e-4,
        seed: int = 0,
        device: torch.device | str | None = None,
        chunk_size: int | None = None,
    ) -> None:
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.num_bins = int(num_bins)
        self.alpha = float(alpha)
        self.whitening = bool(whitening)
        self.max_dims = max_dims
        self.z_threshold = z_threshold
        self.n_iter = int(n_iter)
        self.tol = float(tol)
        self.seed = int(seed)
        self.device = device
        self.chunk_size = chunk_size
        self.centers_: Tensor | None = None

    # ------------------------------------------------------------------ fitting
    def _transform(self, x: Tensor, device: torch.device | str | None) -> Tensor:
        """Flattened samples -> the binning space: used dims, on device, whitened if asked.
        Integer samples (uint8 pixels) stay integers unless whitened (k-means reads them
        chunk by chunk as float32), so no float copy of a large image set is made."""
        if self.dims_ is not None:
            x = x[:, self.dims_.to(x.device)]
        if device is not None:
            x = x.to(device)
        if self.whitening:
            x = x if x.is_floating_point() else x.float()
            x = (x - self.mean_.to(x.device, x.dtype)) / self.std_.to(x.device, x.dtype)
        return x

    def fit(self, train: Any) -> NDB:
        """Bin the training samples ([N, ...], any shape, flattened) with K-means."""
        x = _as_2d(train)
        n, d = x.shape
        if n < self.num_bins:
            raise ValueError(
                f"NDB with num_bins = {self.num_bins} needs at least that many training "
                f"samples, got {n}"
            )
        self.num_dims_ = d
        max_dims = self.max_dims
        if max_dims is None:
            max_dims = d // 6 if d > 1000 else 0
        if 0 < max_dims < d:
            g = torch.Generator().manual_seed(self.seed)
            self.dims_ = torch.randperm(d, generator=g)[:max_dims].sort().values
        else:
            self.dims_ = None
        if self.whitening:  # per-dimension statistics of the used dimensions, float64
            raw = x[:, self.dims_] if self.dims_ is not None else x
            self.mean_, self.std_ = _mean_std(raw)
        x = self._transform(x, self.device)
        self.centers_, labels = kmeans(
            x,
            self.num_bins,
            n_iter=self.n_iter,
            seed=self.seed,
            chunk_size=self.chunk_size,
            tol=self.tol,
        )
        counts = torch.bincount(labels, minlength=self.num_bins).cpu().double()
        self.num_train_ = n
        self.train_proportions_ = counts / n
        return self

    # --------------------------------------------------------------- evaluation
    def bin_labels(self, samples: Any) -> Tensor:
        """[N] bin index (nearest training center) of every sample ([N, ...]), on CPU."""
        self._check_fitted()
        x = _as_2d(samples)
        if x.shape[1] != self.num_dims_:
            raise ValueError(
                f"query samples have {x.shape[1]} values each, the training samples had "
                f"{self.num_dims_}; NDB needs samples of the same shape"
            )
        x = self._transform(x, self.centers_.device)
        labels, _ = assign(x, self.centers_, self.chunk_size)
        return labels.cpu()

    def bin_counts(self, samples: Any) -> Tensor:
        """[K] number of samples ([N, ...]) falling in each bin."""
        return torch.bincount(self.bin_labels(samples), minlength=self.num_bins)

    def evaluate(self, query: Any) -> dict[str, Any]:
        """Compare a query set ([M, ...], same shape and value range as training) with the bins.

        Returns a dict:
            ndb (int): number of statistically different bins.
            ndb_over_k (float): ndb / K.
            js (float): Jensen-Shannon divergence of the bin histograms, in nats.
            p_values, z ([K] float64): per-bin two-tailed p-value and z statistic
                (z > 0: the bin is under-represented in the query set).
            different_bins ([K] bool): p < alpha (or |z| > z_threshold).
            train_proportions, query_proportions ([K] float64).
            num_bins, num_train, num_query (int).
        """
        counts = self.bin_counts(query).double()
        m = int(counts.sum())
        q = counts / m
        z, p_values = two_proportion_z_test(self.train_proportions_, self.num_train_, q, m)
        if self.z_threshold is not None:
            different = z.abs() > self.z_threshold
        else:
            different = p_values < self.alpha
        ndb = int(different.sum())
        return {
            "ndb": ndb,
            "ndb_over_k": ndb / self.num_bins,
            "js": js_divergence(self.train_proportions_, q),
            "p_values": p_values,
            "z": z,
            "different_bins": different,
            "train_proportions": self.train_proportions_.clone(),
            "query_proportions": q,
            "num_bins": self.num_bins,
            "num_train": self.num_train_,
            "num_query": m,
        }

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything `evaluate` needs (to cache the bins of a dataset with torch.save)."""
        self._check_fitted()
        return {
            "num_bins": self.num_bins,
            "alpha": self.alpha,
            "whitening": self.whitening,
            "z_threshold": self.z_threshold,
            "num_dims": self.num_dims_,
            "dims": self.dims_,
            "mean": getattr(self, "mean_", None),
            "std": getattr(self, "std_", None),
            "centers": self.centers_.cpu(),
            "train_proportions": self.train_proportions_,
            "num_train": self.num_train_,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str | None = None):
        """Rebuild a fitted NDB from `state_dict()` (bins on `device`, default CPU)."""
        obj = cls(
            num_bins=state["num_bins"],
            alpha=state["alpha"],
            whitening=state["whitening"],
            z_threshold=state["z_threshold"],
            device=device,
        )
        obj.num_dims_ = state["num_dims"]
        obj.dims_ = state["dims"]
        if state["whitening"]:
            obj.mean_, obj.std_ = state["mean"], state["std"]
        obj.centers_ = state["centers"].to(device or "cpu")
        obj.train_proportions_ = state["train_proportions"]
        obj.num_train_ = state["num_train"]
        return obj

    def _check_fitted(self) -> None:
        if self.centers_ is None:
            raise RuntimeError("NDB is not fitted: call fit(train_samples) first")

    def __repr__(self) -> str:
        return (
            f"NDB(num_bins={self.num_bins}, alpha={self.alpha}, whitening={self.whitening}, "
            f"max_dims={self.max_dims}, fitted={self.centers_ is not None})"
        )


def ndb_score(
    train: Any, query: Any, num_bins: int = 100, alpha: float = 0.05, **kwargs: Any
) -> dict[str, Any]:
    """One-shot NDB: `NDB(num_bins, alpha, **kwargs).fit(train).evaluate(query)`.

    `train` and `query` are [N, ...] tensors or arrays in the same value range; the other
    keyword arguments are those of `NDB` (whitening, max_dims, seed, device, ...).
    """
    return NDB(num_bins=num_bins, alpha=alpha, **kwargs).fit(train).evaluate(query)
