"""Detection metrics of an OOD score: AUROC, AUPR and the FPR at 95 % TPR.

Convention: in-distribution samples are the positives and a score is higher for samples
that look more in-distribution. Every threshold t at a distinct score value flags
"in-distribution" where score >= t; ties between the two sets therefore count as half
right in the AUROC (the trapezoid over the ROC curve) and move both rates together.
"""

from __future__ import annotations

import numpy as np
import torch


def roc_points(
    score_in: torch.Tensor | np.ndarray, score_out: torch.Tensor | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, precision), one entry per distinct threshold in descending order.

    tpr: fraction of in-distribution scores >= t; fpr: the same for OOD scores;
    precision: in-distribution share of everything >= t. Arrays of length #distinct.
    """
    s_in = np.asarray(score_in, dtype=np.float64).ravel()
    s_out = np.asarray(score_out, dtype=np.float64).ravel()
    if len(s_in) == 0 or len(s_out) == 0:
        raise ValueError("OOD metrics need at least one in-distribution and one OOD score")
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("OOD scores must be finite")
    scores = np.concatenate([s_in, s_out])
    positive = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # end of each tie group
    tp = np.cumsum(positive)[last]
    fp = (last + 1) - tp
    return fp / len(s_out), tp / len(s_in), tp / (last + 1)


def auroc(score_in, score_out) -> float:
    """Area under the ROC curve (= P(score_in > score_out) + P(tie) / 2)."""
    fpr, tpr, _ = roc_points(score_in, score_out)
    return float(np.trapezoid(np.r_[0.0, tpr], np.r_[0.0, fpr]))


def aupr(score_in, score_out) -> float:
    """Area under the precision-recall curve, in-distribution positive (average precision:
    sum over thresholds of (recall step) x precision)."""
    _, tpr, precision = roc_points(score_in, score_out)
    return float(np.sum(np.diff(np.r_[0.0, tpr]) * precision))


def fpr_at_tpr(score_in, score_out, tpr_level: float = 0.95) -> float:
    """The fraction of OOD samples kept as in-distribution by the highest threshold that
    keeps at least `tpr_level` of the in-distribution samples."""
    fpr, tpr, _ = roc_points(score_in, score_out)
    return float(fpr[np.searchsorted(tpr, tpr_level - 1e-12)])


def detection_metrics(score_in, score_out) -> dict[str, float]:
    """{"auroc", "aupr", "fpr95"} of one score (higher = more in-distribution)."""
    return {
        "auroc": auroc(score_in, score_out),
        "aupr": aupr(score_in, score_out),
        "fpr95": fpr_at_tpr(score_in, score_out, 0.95),
    }
