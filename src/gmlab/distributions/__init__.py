"""The math layer: densities and their building blocks in plain torch (imports nothing of
`gmlab.nn` or `gmlab.models`)."""

from gmlab.distributions.lowrank import LowRankGaussians
from gmlab.distributions.mfa import MixtureOfFactorAnalyzers
from gmlab.distributions.normal import LOG_2PI, diag_normal_rsample, std_normal_log_prob
from gmlab.distributions.priors import MixturePrior, NormalPrior, Prior

__all__ = [
    "LOG_2PI",
    "LowRankGaussians",
    "MixtureOfFactorAnalyzers",
    "MixturePrior",
    "NormalPrior",
    "Prior",
    "diag_normal_rsample",
    "std_normal_log_prob",
]
