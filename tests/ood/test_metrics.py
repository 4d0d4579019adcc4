"""AUROC, AUPR and FPR95 against scikit-learn on random scores (with ties)."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from gmlab.ood.metrics import aupr, auroc, detection_metrics, fpr_at_tpr


def sklearn_reference(s_in, s_out):
    labels = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    scores = np.r_[s_in, s_out]
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return (
        roc_auc_score(labels, scores),
        average_precision_score(labels, scores),
        fpr[np.argmax(tpr >= 0.95)],
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [None, 1])  # continuous scores, and many ties
def test_matches_sklearn(seed, decimals):
    rng = np.random.default_rng(seed)
    s_in = rng.normal(rng.uniform(-1, 2), 1.0, rng.integers(5, 400))
    s_out = rng.normal(0.0, rng.uniform(0.5, 2), rng.integers(5, 400))
    if decimals is not None:
        s_in, s_out = s_in.round(decimals), s_out.round(decimals)
    ref_auroc, ref_aupr, ref_fpr = sklearn_reference(s_in, s_out)
    assert auroc(s_in, s_out) == pytest.approx(ref_auroc, abs=1e-12)
    assert aupr(s_in, s_out) == pytest.approx(ref_aupr, abs=1e-12)
    assert fpr_at_tpr(s_in, s_out) == pytest.approx(ref_fpr, abs=1e-12)


def test_separated_and_reversed_sets():
    s_in, s_out = np.arange(10, 20.0), np.arange(10.0)
    assert detection_metrics(s_in, s_out) == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    reversed_ = detection_metrics(s_out, s_in)
    assert reversed_["auroc"] == 0.0 and reversed_["fpr95"] == 1.0
    # identical scores: every threshold keeps both sets together
    same = detection_metrics(np.zeros(4), np.zeros(6))
    assert same == {"auroc": 0.5, "aupr": 0.4, "fpr95": 1.0}


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="finite"):
        auroc(np.array([0.0, np.nan]), np.array([1.0]))
    with pytest.raises(ValueError, match="at least one"):
        auroc(np.array([]), np.array([1.0]))
