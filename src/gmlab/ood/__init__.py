"""Out-of-distribution detection: scores through the model protocol, detection metrics,
and the `gmlab-eval ... ood=<set>` run (docs/ood.md)."""

from gmlab.ood.complexity import complexity_bits_per_dim, header_bytes
from gmlab.ood.metrics import aupr, auroc, detection_metrics, fpr_at_tpr
from gmlab.ood.posthoc import ClassGaussians
from gmlab.ood.scores import SCORES, Scorer

__all__ = [
    "SCORES",
    "ClassGaussians",
    "Scorer",
    "aupr",
    "auroc",
    "complexity_bits_per_dim",
    "detection_metrics",
    "fpr_at_tpr",
    "header_bytes",
]
