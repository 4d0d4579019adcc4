"""Sample-quality scores on feature vectors: FD against the Gaussian closed form and scipy's
sqrtm, KID against a hand-written unbiased MMD, precision / recall / density / coverage
against a brute-force computation and hand-made cases; the metric kinds they carry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm
from scipy.spatial.distance import cdist
from sklearn.datasets import load_digits

from gmlab.metrics.frechet import frechet_distance, kernel_distance
from gmlab.metrics.manifold import ManifoldReference, knn_sq_radii, manifold_scores
from gmlab.utils.metric_kinds import sample_kind

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_fd(m1, s1, m2, s2) -> float:
    """Closed form ||m1 - m2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), scipy's sqrtm."""
    root = sqrtm(s1)
    cross = sqrtm(root @ s2 @ root).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * cross))


def random_gaussian(rng, d):
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T / d + 0.1 * np.eye(d)


def test_fd_of_gaussian_samples_matches_the_closed_form():
    rng = np.random.default_rng(0)
    d = 8
    (m1, s1), (m2, s2) = random_gaussian(rng, d), random_gaussian(rng, d)
    x = rng.multivariate_normal(m1, s1, size=40_000)
    y = rng.multivariate_normal(m2, s2, size=40_000)
    fd = frechet_distance(torch.from_numpy(x), torch.from_numpy(y))
    # the sample statistics' FD exactly, the population FD up to sampling error
    sample = gaussian_fd(x.mean(0), np.cov(x.T), y.mean(0), np.cov(y.T))
    assert fd == pytest.approx(sample, rel=1e-8)
    assert fd == pytest.approx(gaussian_fd(m1, s1, m2, s2), rel=0.03)


def digit_features():
    x = load_digits().data.astype(np.float64)
    return torch.from_numpy(x[np.random.default_rng(1).permutation(len(x))])


def test_fd_and_kid_of_a_split_against_itself_are_near_zero_and_large_against_noise():
    x = digit_features()
    a, b = x[:900], x[900:1800]
    noise = torch.rand(900, x.shape[1], dtype=torch.float64) * 16
    fd_same, fd_noise = frechet_distance(a, b), frechet_distance(a, noise)
    assert 0 < fd_same < 0.05 * fd_noise
    kid_same, std_same = kernel_distance(a, b, subsets=20, subset_size=500)
    kid_noise, _ = kernel_distance(a, noise, subsets=20, subset_size=500)
    assert abs(kid_same) < 4 * std_same + 1e-3 * kid_noise
    assert kid_noise > 100 * abs(kid_same)


def unbiased_poly_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """MMD^2 with k(a, b) = (a.b / d + 1)^3, diagonal terms left out of the within-set means."""
    d, m = x.shape[1], len(x)
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.mean())


def test_kid_of_one_full_subset_is_the_unbiased_mmd_and_is_seeded():
    x = digit_features()[:400] / 16
    a, b = x[:200], x[200:] + 0.05
    kid, std = kernel_distance(a, b, subsets=1, subset_size=200)
    assert std == 0
    assert kid == pytest.approx(unbiased_poly_mmd(a.numpy(), b.numpy()), rel=1e-4)
    state = torch.random.get_rng_state()
    assert kernel_distance(a, b, 5, 50, seed=3) == kernel_distance(a, b, 5, 50, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global seed is untouched


def brute_force(real: np.ndarray, fake: np.ndarray, k_pr: int, k_dc: int) -> dict:
    """The four scores from full distance matrices (scipy), as the papers define them."""
    rr, ff, fr = cdist(real, real), cdist(fake, fake), cdist(fake, real)
    r_pr, r_dc = np.sort(rr, 1)[:, k_pr], np.sort(rr, 1)[:, k_dc]
    f_pr = np.sort(ff, 1)[:, k_pr]
    return {
        "precision": float((fr <= r_pr[None]).any(1).mean()),
        "recall": float((fr <= f_pr[:, None]).any(0).mean()),
        "density": float((fr <= r_dc[None]).sum() / (k_dc * len(fake))),
        "coverage": float((fr.min(0) <= r_dc).mean()),
    }


def clusters(rng, n, centers, scale=1.0):
    labels = rng.integers(len(centers), size=n)
    return centers[labels] + scale * rng.normal(size=(n, centers.shape[1]))


@pytest.mark.parametrize("budget", [2**22, 300])  # one chunk; many chunks of a few rows
def test_manifold_scores_match_brute_force_on_clusters(budget):
    rng = np.random.default_rng(2)
    centers = rng.normal(scale=6, size=(4, 5))
    real = clusters(rng, 600, centers)
    fake = clusters(rng, 450, centers[:3], scale=1.3)  # one mode dropped, wider modes
    expected = brute_force(real, fake, 3, 5)
    exact = ManifoldReference(torch.from_numpy(real), 3, 5, torch.float64, budget)
    assert exact.compare(torch.from_numpy(fake)) == pytest.approx(expected, abs=1e-12)
    single = manifold_scores(torch.from_numpy(real), torch.from_numpy(fake))  # float32
    assert single == pytest.approx(expected, abs=3 / 450)
    assert 0.6 < expected["recall"] < 0.9 and expected["coverage"] < 0.85


def test_knn_radii_are_the_kth_neighbour_distances():
    x = np.random.default_rng(3).normal(size=(300, 4))
    want = np.sort(cdist(x, x) ** 2, 1)
    got = knn_sq_radii(torch.from_numpy(x), (1, 4), budget=200)
    for radius, k in zip(got, (1, 4), strict=True):
        np.testing.assert_allclose(radius.numpy(), want[:, k], rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="need more than 300 points"):
        knn_sq_radii(torch.from_numpy(x), (300,))


def test_a_model_covering_one_mode_of_two():
    """Real data: two far-apart blobs in equal shares. Samples from one blob alone: all of
    them lie on the data (precision ~1, density ~1), half of the data is reached (recall and
    coverage ~0.5)."""
    rng = np.random.default_rng(4)
    centers = np.array([[0.0, 0.0, 0.0], [50.0, 0.0, 0.0]])
    real = np.concatenate([clusters(rng, 1000, centers[:1]), clusters(rng, 1000, centers[1:])])
    fake = clusters(rng, 1000, centers[:1])
    scores = manifold_scores(torch.from_numpy(real), torch.from_numpy(fake))
    assert scores["precision"] > 0.95 and 0.8 < scores["density"] < 1.2
    assert scores["recall"] == pytest.approx(0.5, abs=0.03)
    assert scores["coverage"] == pytest.approx(0.5, abs=0.03)
    both = manifold_scores(torch.from_numpy(real), torch.from_numpy(real[::-1].copy()))
    assert both["precision"] == both["recall"] == both["coverage"] == 1.0


def test_sample_kinds_say_which_way_is_better_and_on_which_features():
    fd = sample_kind("frechet_distance", "classifier:0123", samples=10)
    assert fd == {
        "kind": "frechet_distance",
        "better": "lower",
        "features": "classifier:0123",
        "samples": 10,
    }
    assert sample_kind("recall", "pixels")["better"] == "higher"
    assert sample_kind("kernel_distance", "x", better=None)["better"] is None
    with pytest.raises(ValueError, match="not a sample-quality kind"):
        sample_kind("exact", "pixels")


def test_gmlab_report_shows_the_feature_space_of_each_score():
    """A report cell names the features its score was computed on, so FDs on two feature
    networks read as two kinds, never as one."""
    from gmlab.report.table import kind_text

    a = kind_text(sample_kind("frechet_distance", "classifier:aaaa"))
    b = kind_text(sample_kind("frechet_distance", "classifier:bbbb"))
    assert a == "frechet_distance on classifier:aaaa" and a != b
    assert kind_text(sample_kind("precision", "pixels", k=3)) == "precision k=3 on pixels"
