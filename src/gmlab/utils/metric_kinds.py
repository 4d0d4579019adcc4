"""What kind of number a metric is, for run records: an exact log-likelihood, a bound, an
accuracy...

A kind is a dict {"kind": <one of KINDS>, ...details}; bounds carry "bound": True (and the
IWAE bound its number of samples "k"), so that a reader never takes a bound for an exact
value. Sample-quality scores (`sample_kind`) carry which way is better and the feature space
they were computed in, so that scores on different feature networks are never compared.
"""

from __future__ import annotations

KINDS = (
    "exact",
    "elbo",
    "iwae_bound",
    "vq_bound",
    "accuracy",
    "calibration",
    "loss",
    "count",
    "frechet_distance",
    "kernel_distance",
    "precision",
    "recall",
    "density",
    "coverage",
    "ndb",
    "other",
)
BOUNDS = ("elbo", "iwae_bound", "vq_bound")
STAGES = ("train", "val", "test")
# which value of a sample-quality score is better ("near 1": density is ~1 for real data)
BETTER = {
    "frechet_distance": "lower",
    "kernel_distance": "lower",
    "precision": "higher",
    "recall": "higher",
    "density": "near 1",
    "coverage": "higher",
    "ndb": "lower",
}

# the default kind by the last part of a metric's name ("test/bpd" -> "bpd")
BY_NAME = {
    "nll": "exact",
    "bpd": "exact",
    "ll": "exact",
    "elbo": "elbo",
    "bpd_elbo": "elbo",
    "acc": "accuracy",
    "ece": "calibration",
    "loss": "loss",
    "codes_used": "count",
    "active_units": "count",
    "reseeded": "count",
}


def kind(name: str, **details) -> dict:
    """{"kind": name, **details}, with "bound": True for the bounds."""
    if name not in KINDS:
        raise ValueError(f"unknown metric kind {name!r}; one of {KINDS}")
    return {"kind": name, **details, **({"bound": True} if name in BOUNDS else {})}


def metric_kind(metric: str) -> dict:
    """The default kind of a metric by its name (`*/nll`, `*/bpd`: exact; `*/acc`: accuracy;
    unknown names: other)."""
    return kind(BY_NAME.get(metric.rsplit("/", 1)[-1], "other"))


def stage_kinds(names: dict[str, dict], stages: tuple[str, ...] = STAGES) -> dict[str, dict]:
    """{"<stage>/<name>": kind} for every stage: `stage_kinds({"bpd": kind("vq_bound")})`."""
    return {f"{stage}/{name}": value for stage in stages for name, value in names.items()}


def sample_kind(name: str, features: str, **details) -> dict:
    """The kind of a sample-quality score: `better` (lower / higher / near 1) and `features`,
    the feature space ("pixels", or "<network>:<sha256 prefix of its weights file>");
    `details` add to them or replace them (a spread: `better=None`)."""
    if name not in BETTER:
        raise ValueError(f"{name!r} is not a sample-quality kind; one of {tuple(BETTER)}")
    return kind(name, **{"better": BETTER[name], "features": features, **details})
