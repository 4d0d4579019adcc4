"""Converting the hyperparameters of checkpoints written before the parts config groups.

Those checkpoints named their parts by string (`likelihood: bernoulli`, `prior: mog`,
`architecture: mlp`) with the parts' options as flat model options. These functions turn
them into the part dicts (`_target_` + options) that `conf/model/<part>/` writes today.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gmlab.errors import ConfigError

LIKELIHOODS = {
    "bernoulli": {"_target_": "gmlab.distributions.likelihoods.BernoulliLikelihood"},
    "gaussian": {
        "_target_": "gmlab.distributions.likelihoods.GaussianLikelihood",
        "learn_variance": True,
    },
    "gaussian_fixed": {
        "_target_": "gmlab.distributions.likelihoods.GaussianLikelihood",
        "learn_variance": False,
        "std": 1.0,
    },
    "discretized_logistic": {
        "_target_": "gmlab.distributions.likelihoods.DiscretizedLogisticLikelihood"
    },
}

# flat VAE options of the old layout, and their defaults there
_VAE_V0 = {
    "architecture": "mlp",
    "hidden": (400,),
    "activation": "relu",
    "channels": (32, 64, 128, 256),
    "n_components": 1000,
    "learn_weights": False,
    "made_hidden": (512, 512),
    "channels_last": True,
}


def likelihood_spec(spec: Mapping | str) -> Mapping:
    """A likelihood part dict; an old checkpoint's name (e.g. "bernoulli") is converted."""
    if isinstance(spec, str):
        if spec not in LIKELIHOODS:
            raise ConfigError(
                f"unknown model.likelihood {spec!r}; choose one of {sorted(LIKELIHOODS)}"
            )
        return dict(LIKELIHOODS[spec])
    return spec


def vae_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """VAE hyperparameters of either layout -> today's (`encoder`, `decoder`, `likelihood`,
    `prior` part dicts). Today's layout is returned unchanged."""
    hp = dict(hparams)
    if not isinstance(hp.get("prior", "normal"), str):
        return hp
    old = {k: hp.pop(k, default) for k, default in _VAE_V0.items()}
    hidden = [int(h) for h in old["hidden"]]
    channels = [int(c) for c in old["channels"]]
    if old["architecture"] == "conv":
        hp["encoder"] = {
            "_target_": "gmlab.nn.conv_autoencoder.ConvEncoder",
            "channels": channels,
            "channels_last": bool(old["channels_last"]),
        }
        hp["decoder"] = {
            "_target_": "gmlab.nn.conv_autoencoder.ConvDecoder",
            "channels": channels,
            "channels_last": bool(old["channels_last"]),
        }
    else:
        hp["encoder"] = {
            "_target_": "gmlab.nn.mlp.MLPEncoder",
            "hidden": hidden,
            "activation": old["activation"],
        }
        hp["decoder"] = {
            "_target_": "gmlab.nn.mlp.MLPDecoder",
            "hidden": hidden[::-1],
            "activation": old["activation"],
        }
    hp["likelihood"] = likelihood_spec(hp.get("likelihood", "gaussian_fixed"))
    prior = hp.get("prior", "normal")
    hp["prior"] = {
        "normal": {"_target_": "gmlab.distributions.priors.NormalPrior"},
        "mog": {
            "_target_": "gmlab.distributions.priors.MixturePrior",
            "n_components": int(old["n_components"]),
            "learn_weights": bool(old["learn_weights"]),
        },
        "made": {
            "_target_": "gmlab.nn.priors.FlowPrior",
            "hidden": [int(h) for h in old["made_hidden"]],
        },
    }[prior]
    return hp
