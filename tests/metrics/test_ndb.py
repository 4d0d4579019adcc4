"""NDB (gmlab.metrics.ndb): statistics against scipy, behaviour on held-out and
mode-dropped query sets, whitening and random-dimension paths."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import binom, chi2_contingency, norm
from sklearn.datasets import load_digits
from support.devices import NEEDS_GPU

from gmlab.metrics import NDB, ndb_score
from gmlab.metrics.ndb import js_divergence, two_proportion_z_test

ALPHA = 0.05


def null_bound(k: int, n_sets: int = 1, alpha: float = ALPHA) -> float:
    """Upper bound on the mean NDB/K over n_sets independent query sets under the null.

    Each bin is a false positive with probability ~alpha, so the total count over n_sets
    sets is ~Binomial(k * n_sets, alpha) (bins are weakly dependent; the bound is loose
    enough for that): its 0.999 quantile divided by k * n_sets.
    """
    return binom.ppf(0.999, k * n_sets, alpha) / (k * n_sets)


def gmm(n, d=16, comps=10, seed=0, data_seed=0):
    """Samples and component labels of a fixed, well-separated Gaussian mixture."""
    means = torch.randn(comps, d, generator=torch.Generator().manual_seed(data_seed)) * 4
    g = torch.Generator().manual_seed(1000 + seed)
    lab = torch.randint(comps, (n,), generator=g)
    return means[lab] + torch.randn(n, d, generator=g), lab


# --------------------------------------------------------------- statistics vs scipy
def test_z_test_matches_scipy():
    rng = np.random.default_rng(0)
    n1, n2 = 5000, 1200
    c1 = rng.multinomial(n1, np.full(20, 0.05))
    c2 = rng.multinomial(n2, rng.dirichlet(np.ones(20)))
    c2[3] = 0  # a bin empty in the query
    z, p = two_proportion_z_test(torch.tensor(c1 / n1), n1, torch.tensor(c2 / n2), n2)
    for i in range(20):
        # independent formula from counts, p-value through scipy's normal tail
        pooled = (c1[i] + c2[i]) / (n1 + n2)
        z_ref = (c1[i] / n1 - c2[i] / n2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        assert z[i].item() == pytest.approx(z_ref, rel=1e-10)
        assert p[i].item() == pytest.approx(2 * norm.sf(abs(z_ref)), rel=1e-9, abs=1e-300)
        # the pooled z-test is Pearson's chi-square test on the 2x2 table (z^2 = chi2)
        table = np.array([[c1[i], n1 - c1[i]], [c2[i], n2 - c2[i]]])
        chi2, p_chi2, _, _ = chi2_contingency(table, correction=False)
        assert p[i].item() == pytest.approx(p_chi2, rel=1e-7, abs=1e-300)
        assert z[i].item() ** 2 == pytest.approx(chi2, rel=1e-9)


def test_z_test_degenerate_bins():
    z, p = two_proportion_z_test(
        torch.tensor([0.0, 1.0, 0.5]), 10, torch.tensor([0.0, 1.0, 0.5]), 7
    )
    assert torch.equal(z, torch.zeros(3)) and torch.equal(p, torch.ones(3))


def test_js_matches_scipy():
    rng = np.random.default_rng(1)
    for _ in range(5):
        p, q = rng.dirichlet(np.ones(30)), rng.dirichlet(np.ones(30))
        p[:4] = 0  # zero bins on one side
        q[10:12] = 0
        ref = jensenshannon(p, q) ** 2  # natural log by default
        assert js_divergence(torch.tensor(p), torch.tensor(q)) == pytest.approx(ref, rel=1e-10)
    assert js_divergence(torch.tensor([1.0, 0]), torch.tensor([0, 1.0])) == pytest.approx(
        math.log(2)
    )
    assert js_divergence(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0])) == 0.0


def test_evaluate_on_hand_built_bins():
    # 1-d data in three tight clusters: the K=3 bins are the clusters, counts known
    g = torch.Generator().manual_seed(0)

    def data(counts):
        centers = torch.tensor([0.0, 10.0, 20.0]).repeat_interleave(torch.tensor(counts))
        return (centers + 0.1 * torch.randn(len(centers), generator=g))[:, None]

    train_c, query_c = [500, 300, 200], [60, 100, 40]
    res = ndb_score(data(train_c), data(query_c), num_bins=3)
    order = res["train_proportions"].argsort(descending=True)  # bins sorted as the clusters
    assert res["train_proportions"][order].tolist() == pytest.approx([0.5, 0.3, 0.2])
    assert res["query_proportions"][order].tolist() == pytest.approx([0.3, 0.5, 0.2])
    for j, b in enumerate(order.tolist()):
        table = [[train_c[j], 1000 - train_c[j]], [query_c[j], 200 - query_c[j]]]
        p_ref = chi2_contingency(np.array(table), correction=False)[1]
        assert res["p_values"][b].item() == pytest.approx(p_ref, rel=1e-7)
    assert res["different_bins"][order].tolist() == [True, True, False]
    assert res["ndb"] == 2 and res["ndb_over_k"] == pytest.approx(2 / 3)
    assert res["js"] == pytest.approx(jensenshannon([0.5, 0.3, 0.2], [0.3, 0.5, 0.2]) ** 2)
    assert res["num_train"] == 1000 and res["num_query"] == 200
    # a z threshold instead of alpha; a stricter alpha
    assert ndb_score(data(train_c), data(query_c), num_bins=3, z_threshold=100.0)["ndb"] == 0
    strict = ndb_score(data(train_c), data(query_c), num_bins=3, alpha=1e-30)
    assert strict["ndb"] == int((strict["p_values"] < 1e-30).sum())


# ----------------------------------------------------------- behaviour on real-ish data
@pytest.fixture(scope="module")
def gmm_ndb():
    x, lab = gmm(20_000)
    return NDB(num_bins=50, seed=0).fit(x), x, lab


def test_held_out_gmm_samples_near_zero(gmm_ndb):
    ndb, _, _ = gmm_ndb
    fracs, js = [], []
    for s in range(1, 6):  # five fresh, independent query sets of the same mixture
        res = ndb.evaluate(gmm(10_000, seed=s)[0])
        fracs.append(res["ndb_over_k"])
        js.append(res["js"])
    assert np.mean(fracs) <= null_bound(50, n_sets=5)  # 0.09 for K=50, 5 sets
    assert max(fracs) <= null_bound(50)
    assert max(js) < 0.01


def test_dropped_component_gives_many_different_bins(gmm_ndb):
    ndb, x, lab = gmm_ndb
    q, qlab = gmm(10_000, seed=7)
    res = ndb.evaluate(q[qlab != 0])
    # bins whose training members are mostly from the dropped component
    train_bins = ndb.bin_labels(x)
    dropped = [b for b in range(50) if (lab[train_bins == b] == 0).float().mean() > 0.5]
    assert len(dropped) >= 2
    assert bool(res["different_bins"][dropped].all())
    assert res["ndb"] >= len(dropped)
    assert (res["z"][dropped] > 0).all()  # under-represented in the query
    assert res["js"] > 0.03


def test_digits_held_out_and_class_removed():
    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1200], perm[1200:]
    ndb = NDB(num_bins=20).fit(X[tr])
    held_out = ndb.evaluate(X[te])
    assert held_out["ndb_over_k"] <= null_bound(20)
    train_bins = ndb.bin_labels(X[tr])
    zero_bins = [b for b in range(20) if (y[tr][train_bins == b] == 0).float().mean() > 0.5]
    removed = ndb.evaluate(X[te][y[te] != 0])
    assert len(zero_bins) >= 1
    assert bool(removed["different_bins"][zero_bins].all())
    assert removed["ndb"] >= len(zero_bins) and removed["ndb"] > held_out["ndb"]
    assert removed["js"] > 5 * held_out["js"]


# ------------------------------------------------------------------- options, API
def test_whitening_standardises_each_dimension():
    x, _ = gmm(4000, d=8)
    q, _ = gmm(2000, d=8, seed=3)
    scale = torch.logspace(-2, 2, 8)
    offset = torch.linspace(-50, 50, 8)
    xs, qs = x * scale + offset, q * scale + offset
    a = NDB(num_bins=10, whitening=True).fit(xs)
    ref = xs.double().numpy()
    np.testing.assert_allclose(a.mean_.numpy(), ref.mean(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(a.std_.numpy(), ref.std(0) + 1e-6, rtol=1e-5)
    # the same as binning the standardised data without whitening
    b = NDB(num_bins=10).fit((xs - a.mean_) / a.std_)
    ra, rb = a.evaluate(qs), b.evaluate((qs - a.mean_) / a.std_)
    assert torch.equal(a.centers_, b.centers_)
    assert torch.equal(ra["query_proportions"], rb["query_proportions"])
    # constant dimensions stay finite
    x_const = torch.cat([x, torch.zeros(len(x), 2)], 1)
    r = ndb_score(x_const, torch.cat([q, torch.zeros(len(q), 2)], 1), num_bins=10, whitening=True)
    assert math.isfinite(r["js"])


def test_whitening_finds_structure_hidden_by_a_large_noise_dimension():
    # 7 dimensions carry the mixture, one carries N(0, 1000^2) noise: without whitening the
    # bins slice the noise dimension and barely see a dropped component
    def data(n, seed):
        x, lab = gmm(n, d=7, comps=6, seed=seed)
        noise = 1000 * torch.randn(n, 1, generator=torch.Generator().manual_seed(seed))
        return torch.cat([x, noise], 1), lab

    x, _ = data(6000, 0)
    q, qlab = data(3000, 1)
    plain = ndb_score(x, q[qlab != 0], num_bins=12)
    white = ndb_score(x, q[qlab != 0], num_bins=12, whitening=True)
    assert white["ndb"] >= 2 and white["ndb"] > plain["ndb"]
    assert white["js"] > 2 * plain["js"]


def test_random_dims_above_1000_and_image_shapes():
    # [N, 3, 20, 20] images: d = 1200 > 1000 -> 200 random dimensions
    x, lab = gmm(3000, d=1200, comps=5)
    q, qlab = gmm(1500, d=1200, comps=5, seed=2)
    ndb = NDB(num_bins=15, seed=4).fit(x.reshape(-1, 3, 20, 20))
    assert ndb.dims_.shape == (200,) and len(torch.unique(ndb.dims_)) == 200
    assert torch.equal(ndb.dims_, NDB(num_bins=15, seed=4).fit(x).dims_)
    assert not torch.equal(ndb.dims_, NDB(num_bins=15, seed=5).fit(x).dims_)
    assert ndb.centers_.shape == (15, 200)
    held = ndb.evaluate(q.reshape(-1, 3, 20, 20))
    assert held["ndb_over_k"] <= null_bound(15)
    assert ndb.evaluate(q[qlab != 0])["ndb"] > held["ndb"]
    # explicit max_dims, and max_dims=0 = every dimension
    assert NDB(num_bins=5, max_dims=50).fit(x[:500]).dims_.shape == (50,)
    assert NDB(num_bins=5, max_dims=0).fit(x[:500]).dims_ is None
    assert NDB(num_bins=5).fit(x[:500, :1000]).dims_ is None


def test_inputs_state_dict_and_errors(tmp_path):
    x, _ = gmm(1000, d=6)
    q, _ = gmm(500, d=6, seed=1)
    xu8 = (x * 10 + 128).clamp(0, 255).to(torch.uint8)
    qu8 = (q * 10 + 128).clamp(0, 255).to(torch.uint8)
    ndb = NDB(num_bins=8, whitening=True).fit(xu8.numpy())  # numpy uint8 accepted
    res = ndb.evaluate(qu8)
    assert isinstance(res["ndb"], int) and isinstance(res["js"], float)
    assert res["p_values"].shape == (8,) and res["different_bins"].dtype == torch.bool
    assert res["query_proportions"].sum().item() == pytest.approx(1.0)
    # integer pixels are binned without a float copy, exactly as their float values
    r_int = NDB(num_bins=8).fit(xu8).evaluate(qu8)
    r_float = NDB(num_bins=8).fit(xu8.float()).evaluate(qu8.float())
    assert torch.equal(r_int["p_values"], r_float["p_values"])
    torch.save(ndb.state_dict(), tmp_path / "bins.pt")
    again = NDB.from_state_dict(torch.load(tmp_path / "bins.pt"))
    res2 = again.evaluate(qu8)
    assert res2["ndb"] == res["ndb"] and torch.equal(res2["p_values"], res["p_values"])
    with pytest.raises(ValueError, match="same shape"):
        ndb.evaluate(qu8[:, :5])
    with pytest.raises(RuntimeError, match="not fitted"):
        NDB().evaluate(q)
    with pytest.raises(ValueError, match="at least"):
        NDB(num_bins=100).fit(x[:50])
    with pytest.raises(ValueError):
        NDB(alpha=1.5)


@NEEDS_GPU
def test_cuda_matches_cpu():
    x, _ = gmm(5000)
    q, _ = gmm(2000, seed=1)
    # the same bins give the same test on either device
    ndb = NDB(num_bins=20).fit(x)
    on_gpu = NDB.from_state_dict(ndb.state_dict(), device="cuda")
    cpu, gpu = ndb.evaluate(q), on_gpu.evaluate(q)
    assert gpu["ndb"] == cpu["ndb"]
    # a point on a bin boundary may fall either way under the devices' rounding
    torch.testing.assert_close(
        gpu["query_proportions"].cpu(), cpu["query_proportions"], atol=1e-3, rtol=0
    )
    assert gpu["js"] == pytest.approx(cpu["js"], abs=1e-4)
    # bins fitted on the GPU (its own k-means++ draws, its own rounding) are as good a
    # partition: the same verdict on a sample of the same distribution, within one bin
    fitted_on_gpu = ndb_score(x, q, num_bins=20, device="cuda")
    assert abs(fitted_on_gpu["ndb"] - cpu["ndb"]) <= 1
    assert fitted_on_gpu["js"] == pytest.approx(cpu["js"], abs=5e-3)
