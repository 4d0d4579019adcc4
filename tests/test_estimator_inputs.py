"""`gmlab.MFA` never returns a wrong number silently: the kind of data fixed at fit time
(pixels or continuous) applies to every later input, whatever its dtype; pixels outside
0..255, floats beyond float32 and K > N are clear errors. Each accepted case is checked
against the result for the fit's own dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from gmlab import MFA
from gmlab.errors import ConfigError, NonFiniteError, ShapeError
from gmlab.estimators.inputs import FLOAT32_MAX, as_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def X():
    return load_digits().data  # float64 values 0..16 (whole numbers)


@pytest.fixture(scope="module")
def continuous(X):
    return MFA(3, 2, max_iter=3).fit(X[:500])


@pytest.fixture(scope="module")
def pixels(X):
    x8 = (X[:500] * 255 / 16).round().astype(np.uint8)
    return MFA(3, 2, max_iter=3, noise_floor=3e-5).fit(x8), x8


def test_the_fit_records_the_kind_of_data(continuous, pixels):
    assert continuous.input_kind_ == "continuous"
    assert pixels[0].input_kind_ == "pixels"


def test_integers_on_a_float_fit_score_as_the_same_floats(X, continuous):
    reference = continuous.score_samples(X[:5])  # float64, as fitted
    for same in (X[:5].astype(int), X[:5].astype(np.uint8), X[:5].astype(np.float32)):
        np.testing.assert_allclose(continuous.score_samples(same), reference, rtol=1e-6)
    as_tensor = continuous.score_samples(torch.from_numpy(X[:5].astype(np.int32)))
    np.testing.assert_allclose(as_tensor.numpy(), reference, rtol=1e-6)
    np.testing.assert_allclose(
        continuous.predict_proba(X[:5].astype(int)), continuous.predict_proba(X[:5]), rtol=1e-6
    )
    mask = np.arange(64) < 32
    np.testing.assert_allclose(
        continuous.reconstruct(X[:3].astype(int), mask),
        continuous.reconstruct(X[:3], mask),
        rtol=1e-6,
    )


def test_whole_floats_on_a_pixel_fit_score_as_the_same_pixels(pixels):
    m, x8 = pixels
    reference = m.score_samples(x8[:20])
    for same in (x8[:20].astype(np.int64), x8[:20].astype(np.float64)):
        np.testing.assert_array_equal(m.score_samples(same), reference)
    assert m.bpd(x8[:20].astype(np.float32)) == m.bpd(x8[:20])


def test_inputs_that_are_not_pixels_are_refused_on_a_pixel_fit(pixels):
    m, x8 = pixels
    with pytest.raises(ShapeError, match="X holds float64 values that are not whole numbers"):
        m.score_samples(x8[:5] / 255.0)
    too_big = x8[:5].astype(int)
    too_big[0, 3] = 256
    with pytest.raises(ShapeError, match=r"X holds values from 0 to 256.*0\.\.255"):
        m.predict(too_big)
    with pytest.raises(ShapeError, match=r"X_uint8 holds values from -1 to"):
        m.bpd(x8[:5].astype(int) - 1)  # the blank pixels become -1
    with pytest.raises(ShapeError, match="X holds values from 0 to 256"):
        m.reconstruct(too_big, np.ones(64, dtype=bool))


def test_integer_fit_data_outside_pixels_are_refused(X):
    with pytest.raises(ShapeError, match=r"X holds values from 0 to 100000.*astype\(float\)"):
        MFA(3, 2).fit((X[:50] * 6250).astype(int))
    with pytest.raises(ShapeError, match=r"X holds values from -16 to 0"):
        MFA(3, 2).fit(-X[:50].astype(int))


def test_bits_per_dim_needs_a_pixel_fit(X, continuous):
    with pytest.raises(ShapeError, match="bpd needs a model fitted on 8-bit pixels"):
        continuous.bpd(X[:5].astype(np.uint8))


def test_float32_overflow_is_caught_before_the_cast(X, continuous):
    huge = X[:5] * 1e300
    assert np.isinf(huge.astype(np.float32)).any()  # what the cast would have made of it
    with pytest.raises(NonFiniteError, match="beyond float32's range"):
        continuous.score_samples(huge)
    with pytest.raises(NonFiniteError, match="beyond float32's range"):
        MFA(3, 2).fit(X[:50] * 1e300)
    # the boundary: float32's largest value passes, the next float64 above it does not
    edge = np.full((2, 3), FLOAT32_MAX)
    assert as_batch(edge)[0].float().isfinite().all()
    with pytest.raises(NonFiniteError):
        as_batch(np.nextafter(edge, np.inf))


def test_more_components_than_samples_is_a_clear_error(X):
    with pytest.raises(ConfigError, match=r"n_components=50 is larger than the number of samples"):
        MFA(50, 2).fit(X[:20])
