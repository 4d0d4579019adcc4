"""The `>>>` examples in the docstrings of gmlab's public entry points run, and give what
they show (each a short, seeded CPU example checked against a reference or an analytic
value)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "gmlab.estimators.mfa",  # gmlab.MFA: fit, score, sample
    "gmlab.distributions.lowrank",  # low-rank log-density vs MultivariateNormal
    "gmlab.distributions.priors",  # NormalPrior, MixturePrior vs torch.distributions
    "gmlab.nn.flows.realnvp",  # build_realnvp inverts itself, log-det vs the Jacobian
    "gmlab.data.preprocess",  # Preprocessor
    "gmlab.metrics.bpd",  # bits_per_dim: the uniform density is 8 bits/dim
    "gmlab.metrics.ndb",  # NDB of a sample against itself
    "gmlab.ops.kmeans",  # kmeans, assign
    "gmlab.utils.checkpoint",  # load_model of a checkpoint just written
    "gmlab.utils.trust",  # check_stored_config refuses a numpy target
]
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, capsys):
    module = importlib.import_module(name)
    failed, attempted = doctest.testmod(module, optionflags=FLAGS, report=False)
    report = capsys.readouterr().out
    assert attempted > 0, f"{name} has no >>> example"
    assert failed == 0, f"{failed} of {attempted} examples of {name} failed:\n{report}"
