"""gmlab.ops.kmeans against scikit-learn's Lloyd k-means and brute-force distances."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from support.devices import NEEDS_GPU

from gmlab.ops import assign, inertia, kmeans, kmeans_plusplus


@pytest.fixture(scope="module")
def digits():
    return torch.from_numpy(load_digits().data.astype(np.float32))  # [1797, 64], 0..16


def blobs(n=600, d=5, k=4, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g) * 6
    lab = torch.randint(k, (n,), generator=g)
    return means[lab] + torch.randn(n, d, generator=g) + offset


def sklearn_lloyd(x, init, max_iter=300):
    km = KMeans(
        len(init), init=init.numpy(), n_init=1, max_iter=max_iter, tol=0.0, algorithm="lloyd"
    )
    return km.fit(x.numpy())


@pytest.mark.parametrize("k", [3, 10, 25])
def test_same_init_matches_sklearn(digits, k):
    init = kmeans_plusplus(digits, k, seed=k)
    centers, labels = kmeans(digits, k, n_iter=300, init=init)
    km = sklearn_lloyd(digits, init)
    assert np.array_equal(labels.numpy(), km.labels_)
    np.testing.assert_allclose(centers.numpy(), km.cluster_centers_, atol=1e-4)
    assert inertia(digits, centers) == pytest.approx(km.inertia_, rel=1e-5)


def test_float32_stable_far_from_origin():
    # data at ~1e4 from the origin: the naive ||x||^2 - 2xc + ||c||^2 loses the clusters
    x = blobs(offset=1e4)
    init = x[:4].clone()
    centers, labels = kmeans(x, 4, n_iter=100, init=init)
    km = sklearn_lloyd(x.double(), init.double())
    assert np.array_equal(labels.numpy(), km.labels_)
    np.testing.assert_allclose(centers.double().numpy(), km.cluster_centers_, atol=1e-2)


def test_plusplus_inertia_comparable_to_sklearn(digits):
    ours = [inertia(digits, kmeans(digits, 10, n_iter=100, seed=s)[0]) for s in range(3)]
    theirs = [KMeans(10, n_init=1, random_state=s).fit(digits.numpy()).inertia_ for s in range(3)]
    assert np.median(ours) <= 1.03 * np.median(theirs)


def test_plusplus_picks_distinct_rows(digits):
    c = kmeans_plusplus(digits, 20, seed=3)
    d = torch.cdist(c.double(), digits.double())
    assert bool((d.min(1).values < 1e-4).all())  # every center is a data row
    assert len(torch.unique(c, dim=0)) == 20


def test_assign_matches_brute_force(digits):
    c = digits[torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))[:17]]
    labels, sq = assign(digits, c, chunk_size=100)
    d2 = torch.cdist(digits.double(), c.double()) ** 2
    ref_sq = d2.min(1).values
    np.testing.assert_allclose(sq.double().numpy(), ref_sq.numpy(), rtol=1e-4, atol=1e-3)
    # labels agree except on (near-)ties
    picked = d2.gather(1, labels[:, None]).squeeze(1)
    assert bool(((picked - ref_sq).abs() <= 1e-3 * (1 + ref_sq)).all())


def test_chunking_and_determinism(digits):
    a = kmeans(digits, 12, seed=5)
    b = kmeans(digits, 12, seed=5, chunk_size=97)
    c = kmeans(digits, 12, seed=5)
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    assert torch.equal(a[1], b[1])
    torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=0)
    d = kmeans(digits, 12, seed=6)
    assert not torch.equal(a[0], d[0])


def test_empty_cluster_reseeded_like_sklearn():
    x = blobs(n=300, d=3, k=3, seed=1)
    init = torch.cat([x[:3], torch.full((2, 3), 1e3)])  # two centers no point is near
    centers, labels = kmeans(x, 5, n_iter=300, init=init)
    km = sklearn_lloyd(x.double(), init.double())
    assert np.array_equal(labels.numpy(), km.labels_)
    assert torch.bincount(labels, minlength=5).min() > 0
    np.testing.assert_allclose(centers.double().numpy(), km.cluster_centers_, atol=1e-4)


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_duplicates_and_k_above_distinct_points(init):
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]).repeat_interleave(20, 0)
    centers, labels = kmeans(x, 7, init=init)  # 3 distinct points, 7 clusters
    assert torch.isfinite(centers).all()
    assert labels.min() >= 0 and labels.max() < 7
    assert inertia(x, centers) == pytest.approx(0.0, abs=1e-6)
    # constant data, k = N
    const = torch.full((5, 4), 3.0)
    c, lab = kmeans(const, 5, init=init)
    assert torch.isfinite(c).all() and torch.allclose(c, const[:1].expand(5, 4))


def test_errors():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="k <= N"):
        kmeans(x, 6)
    with pytest.raises(ValueError):
        kmeans(x, 0)
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        kmeans(torch.randn(5), 2)
    with pytest.raises(ValueError, match="init"):
        kmeans(x, 2, init="nope")
    with pytest.raises(ValueError, match="init centers"):
        kmeans(x, 2, init=torch.zeros(3, 2))
    with pytest.raises(ValueError):
        assign(x, torch.zeros(2, 3))


def test_dtypes():
    x = (blobs(n=200, d=4, k=3) * 5 + 128).clamp(0, 255).to(torch.uint8)
    c, lab = kmeans(x, 3)
    assert c.dtype == torch.float32 and lab.dtype == torch.int64
    c64, _ = kmeans(x.double(), 3)
    assert c64.dtype == torch.float64
    torch.testing.assert_close(c.double(), c64, atol=1e-3, rtol=0)


def test_tol_stops_early(digits):
    c_full, _ = kmeans(digits, 10, n_iter=300, seed=0)
    c_tol, _ = kmeans(digits, 10, n_iter=300, seed=0, tol=1e-1)
    assert inertia(digits, c_tol) >= inertia(digits, c_full) - 1e-3
    assert inertia(digits, c_tol) <= 1.05 * inertia(digits, c_full)


@NEEDS_GPU
def test_cuda_matches_cpu(digits):
    init = kmeans_plusplus(digits, 10, seed=0)
    c_cpu, l_cpu = kmeans(digits, 10, init=init, n_iter=300)
    c_gpu, l_gpu = kmeans(digits.cuda(), 10, init=init, n_iter=300)
    assert c_gpu.device.type == "cuda"
    assert (l_gpu.cpu() == l_cpu).float().mean() > 0.999
    a = kmeans(digits.cuda(), 10, seed=1)
    b = kmeans(digits.cuda(), 10, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
