"""`gmlab.MFA`, the scikit-learn-style estimator over MFAModel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError

from gmlab import MFA
from gmlab.data.digits import DigitsDataModule
from gmlab.errors import NonFiniteError, ShapeError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def X():
    rng = np.random.RandomState(0)
    return load_digits().data[:600] / 16 + 0.02 * rng.randn(600, 64)


@pytest.fixture(scope="module")
def fitted(X):
    with torch.random.fork_rng():
        return MFA(n_components=5, n_factors=3, max_iter=8, tol=0.0).fit(X)


def test_fit_returns_self_with_fitted_attributes(X, fitted):
    assert isinstance(fitted, MFA)
    assert fitted.means_.shape == (5, 64) and fitted.factors_.shape == (5, 64, 3)
    assert fitted.noise_variance_.shape == (5, 64) and fitted.weights_.shape == (5,)
    assert math.isclose(fitted.weights_.sum(), 1.0, rel_tol=1e-5)
    assert fitted.n_features_in_ == 64 and fitted.n_iter_ == 8
    assert len(fitted.log_likelihood_) == 8
    assert np.all(np.diff(fitted.log_likelihood_) > -1e-3)  # EM: non-decreasing
    assert "n_components=5" in repr(fitted)


def test_scores_predictions_and_types(X, fitted):
    s = fitted.score_samples(X)
    assert isinstance(s, np.ndarray) and s.shape == (600,)
    assert math.isclose(fitted.score(X), float(s.mean()), rel_tol=1e-6)
    st = fitted.score_samples(torch.from_numpy(X))
    assert torch.is_tensor(st)
    np.testing.assert_allclose(st.numpy(), s, rtol=1e-5)
    proba = fitted.predict_proba(X[:10])
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(fitted.predict(X[:10]), proba.argmax(1))


def test_sample_and_reconstruct(X, fitted):
    xs, comp = fitted.sample(7)
    assert xs.shape == (7, 64) and comp.shape == (7,) and comp.max() < 5
    mask = np.zeros(64, dtype=bool)
    mask[:32] = True
    rec = fitted.reconstruct(X[:4], mask)
    np.testing.assert_allclose(rec[:, :32], X[:4, :32], rtol=0, atol=1e-6)
    per_sample = np.random.RandomState(1).rand(4, 64) < 0.5
    rec2 = fitted.reconstruct(X[:4], per_sample, mode="mixture")
    np.testing.assert_allclose(rec2[per_sample], X[:4][per_sample], rtol=0, atol=1e-6)
    # the filled-in half is closer to the truth than the mean image is
    err = np.abs(rec[:, 32:] - X[:4, 32:]).mean()
    assert err < np.abs(X.mean(0)[32:] - X[:4, 32:]).mean()


def test_integer_pixels_give_bits_per_dim():
    x8 = (load_digits().data[:500] * 255 / 16).round().astype(np.uint8)
    m = MFA(n_components=4, n_factors=2, max_iter=5, noise_floor=3e-5).fit(x8)
    bpd = m.bpd(x8)
    assert 3.0 < bpd < 8.0
    per = m.bpd(x8, per_sample=True)
    assert per.shape == (500,) and math.isclose(per.mean(), bpd, rel_tol=1e-4)
    ll = m.score_samples(x8)  # log-density of the dequantized pixels on the unit cube
    np.testing.assert_allclose((-ll + 64 * math.log(256)) / (64 * math.log(2)), per, rtol=1e-4)
    xs, _ = m.sample(3)
    assert xs.min() >= 0 and xs.max() <= 255
    # floats with whole values are a lossless cast of the pixels: the same numbers
    assert m.bpd(x8.astype(np.float32)) == bpd


def test_fit_on_a_datamodule():
    dm = DigitsDataModule(val_size=100, limit=400, batch_size=128)
    m = MFA(n_components=3, n_factors=2, max_iter=3).fit(dm)
    assert m.n_features_in_ == 64
    x_test = dm.tensors("test")[0]
    assert torch.isfinite(m.score_samples(x_test)).all()  # images [N, 1, 8, 8] flattened


def test_mppca_with_finetuning_and_early_stop(X):
    m = MFA(
        n_components=3,
        n_factors=2,
        noise="isotropic",
        max_iter=50,
        tol=0.5,
        finetune_epochs=1,
        batch_size=200,
    ).fit(X)
    assert m.converged_ and m.n_iter_ < 50
    assert np.allclose(m.noise_variance_, m.noise_variance_[:, :1])


def test_input_validation_messages(X, fitted):
    with pytest.raises(NotFittedError, match="not fitted"):
        MFA().score_samples(X)
    with pytest.raises(ShapeError, match="2-D"):
        fitted.score_samples(X[0])
    with pytest.raises(ShapeError, match="has 10 features, but MFA is expecting 64"):
        fitted.score_samples(X[:, :10])
    bad = X[:5].copy()
    bad[0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="NaN"):
        fitted.score_samples(bad)
    with pytest.raises(ShapeError, match="boolean"):
        fitted.reconstruct(X[:2], np.ones(64))
    with pytest.raises(ValueError, match="noise must be"):
        MFA(noise="full").fit(X)
    with pytest.raises(ValueError, match="n_components"):
        MFA(n_components=0).fit(X)
    with pytest.raises(ShapeError, match="at least 2 samples"):
        MFA().fit(X[:1])
