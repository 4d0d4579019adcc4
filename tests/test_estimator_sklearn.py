"""`gmlab.MFA` under scikit-learn itself: clone, set_params, GridSearchCV, Pipeline and a
subset of `check_estimator`'s checks (those that need no change of gmlab's error classes)."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.utils.estimator_checks as checks
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from gmlab import MFA

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def X():
    return load_digits().data[:300]


def test_clone_gives_an_unfitted_twin_that_refits_to_the_same_numbers(X):
    m = MFA(3, 2, max_iter=3, random_state=4).fit(X)
    twin = clone(m)
    assert twin.get_params() == m.get_params() and twin is not m
    assert not hasattr(twin, "model_") and not hasattr(twin, "means_")
    np.testing.assert_allclose(twin.fit(X).score_samples(X), m.score_samples(X), rtol=1e-5)


def test_set_params_follows_the_convention():
    m = MFA()
    assert m.set_params(n_components=4, noise="isotropic") is m
    assert (m.n_components, m.noise) == (4, "isotropic")
    assert m.get_params()["n_components"] == 4
    with pytest.raises(ValueError, match="Invalid parameter"):
        m.set_params(n_clusters=3)


def test_grid_search_matches_a_hand_written_cross_validation(X):
    base = MFA(n_factors=2, max_iter=3)
    grid = {"n_components": [1, 3]}
    folds = KFold(2, shuffle=True, random_state=0)
    search = GridSearchCV(base, grid, cv=folds).fit(X)
    by_hand = [
        np.mean(
            [MFA(k, 2, max_iter=3).fit(X[train]).score(X[test]) for train, test in folds.split(X)]
        )
        for k in grid["n_components"]
    ]
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], by_hand, rtol=1e-5)
    assert search.best_params_ == {"n_components": grid["n_components"][int(np.argmax(by_hand))]}
    assert search.best_estimator_.n_components == search.best_params_["n_components"]


def test_pipeline_with_a_scaler_equals_the_steps_by_hand(X):
    pipe = Pipeline([("scale", StandardScaler()), ("mfa", MFA(3, 2, max_iter=3))]).fit(X)
    scaler = StandardScaler().fit(X)
    alone = MFA(3, 2, max_iter=3).fit(scaler.transform(X))
    np.testing.assert_allclose(
        pipe.score_samples(X[:50]), alone.score_samples(scaler.transform(X[:50])), rtol=1e-5
    )
    assert pipe.score(X[:50]) == pytest.approx(alone.score(scaler.transform(X[:50])), rel=1e-5)


@pytest.mark.parametrize(
    "check",
    [
        "check_no_attributes_set_in_init",
        "check_parameters_default_constructible",
        "check_get_params_invariance",
        "check_set_params",
        "check_estimator_cloneable",
        "check_estimator_repr",
        "check_do_not_raise_errors_in_init_or_set_params",
        "check_estimators_unfitted",
        "check_fit_check_is_fitted",
        "check_dont_overwrite_parameters",
        "check_estimators_overwrite_params",
        "check_n_features_in",
        "check_n_features_in_after_fitting",
        "check_fit2d_predict1d",
        "check_fit2d_1sample",
        "check_fit1d",
        "check_estimators_dtypes",
        "check_fit_score_takes_y",
        "check_methods_subset_invariance",
        "check_methods_sample_order_invariance",
        "check_fit_idempotent",
        "check_dict_unchanged",
        "check_estimators_pickle",
    ],
)
def test_scikit_learn_estimator_checks(check):
    # left out: check_estimators_nan_inf wants a ValueError for NaN in X; gmlab raises its
    # NonFiniteError (a FloatingPointError), as everywhere else
    getattr(checks, check)("MFA", MFA(n_components=2, n_factors=1, max_iter=2))
