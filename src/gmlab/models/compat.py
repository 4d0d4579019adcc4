"""Checkpoints written by gmlab 0.1: every conversion of their contents, in one place.

gmlab 0.1 wrote the model options flat (`lr`, `lr_schedule`, the flow's options; parts named
by string: `likelihood: bernoulli`, `prior: mog`, `architecture: mlp`; the classifier's
optimizer by name), recorded no `checkpoint_version` (0) and used older weight names.
VQ-VAEs of its last layout (version 1) still named their likelihood by string, GMM
classifiers of theirs (version 1) their head, with the trunk's and the head's options flat,
and VAEs of theirs (version 1) their network priors in `gmlab.nn.priors`. A VQ-VAE saved
without a quantizer (version 2 and older) had the gradient-trained codebook, and a classifier
with a null lr_scheduler (version 2 and older) a constant lr, where a left-out part is now
the preset's.
`upgrade_checkpoint(checkpoint)` turns such a checkpoint dict, in place, into today's: the
hyperparameters by the converter registered under the recorded class name, from the recorded
version, then the weights' names and state; it records the class's current version.

It only moves, renames and fills dict keys: every `_target_` it writes is a fixed gmlab or
torch name, except the network priors' module rename, which keeps the rest of the stored
name; the trust check then sees every converted name like any other, so nothing in the file
picks code. `gmlab.models` registers it with
`gmlab.utils.checkpoint.register_upgrade`; `load_model` and `check_compatible` run it after
the recorded class was checked and before the stored config is (`gmlab.utils.trust`). No
model build calls it. `tests/fixtures/checkpoints_v0/` keeps one gmlab 0.1 checkpoint per
family with the values that code computed, and the tests reproduce them.

Removal: delete this module, its registration in `gmlab/models/__init__.py`,
`tests/fixtures/checkpoints_v0/` and the tests that read them when gmlab 0.3 is released;
checkpoints written by gmlab 0.1 then need gmlab 0.2 to be read and re-saved.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from gmlab.errors import ConfigError

ADAM = "torch.optim.Adam"
WSD = "gmlab.utils.lr_schedule.WarmupStableDecay"

# likelihood names -> today's part dicts (conf/model/likelihood/)
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
# flat VAE options and their defaults in gmlab 0.1
VAE_V0 = {
    "architecture": "mlp",
    "hidden": (400,),
    "activation": "relu",
    "channels": (32, 64, 128, 256),
    "n_components": 1000,
    "learn_weights": False,
    "made_hidden": (512, 512),
    "channels_last": True,
}
# the VQ-VAE's codebook learned by gradient (vae-pytorch's), the quantizer before version 3
GRADIENT_QUANTIZER = {"_target_": "gmlab.nn.vector_quantizer.VectorQuantizer"}
# the module of the priors built on networks, before and after gmlab 0.2
OLD_NETWORK_PRIORS, NETWORK_PRIORS = "gmlab.nn.priors.", "gmlab.nn.network_priors."
# the RealNVP flow's options, flat model options in gmlab 0.1
REALNVP_FLOW_V0 = (
    "num_scales",
    "num_blocks",
    "filters",
    "filter_growth",
    "kernel_size",
    "alpha",
    "norm",
    "net_norm",
    "channels_last",
)
# the classifier's optimizer names
CLASSIFIER_OPTIMIZERS_V0 = {
    "adadelta": {"_target_": "torch.optim.Adadelta"},
    "adam": {"_target_": ADAM},
    "sgd": {"_target_": "torch.optim.SGD", "momentum": 0.9},
}
# the classifier's flat trunk and head options and their defaults (versions 0 and 1)
CLASSIFIER_V1 = {
    "head": "gmm",
    "channels": (16, 32),
    "kernel_size": 5,
    "dropout": 0.0,
    "components_per_class": 1,
    "dim": None,
    "covariance": "tril",
    "rank": None,
    "floor": 1e-3,
}
# MFAModel options of the Adam phase that moved to MFAFinetune
MFA_FINETUNE_V0 = ("em_passes", "finetune_lr")
# torch's weight-norm parametrization (RealNVP before WeightNormConv2d) -> WeightNormConv2d
WEIGHT_NORM_V0 = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}


# ------------------------------------------------------------ shared pieces
def likelihood_spec(name: str) -> dict:
    """A likelihood part dict from its gmlab 0.1 name (e.g. "bernoulli")."""
    if name not in LIKELIHOODS:
        raise ConfigError(f"unknown model.likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}")
    return dict(LIKELIHOODS[name])


def flat_optimizer(hparams: dict) -> dict:
    """A flat `lr` (and the `lr_schedule` warm-up / stable / decay options) -> Adam and
    WarmupStableDecay part configs of the same meaning; other keys are kept."""
    hp = dict(hparams)
    if "lr" in hp and "optimizer" not in hp:
        hp["optimizer"] = {"_target_": ADAM, "_partial_": True, "lr": hp.pop("lr")}
    if "lr_schedule" in hp:
        schedule = hp.pop("lr_schedule") or {}
        hp["lr_scheduler"] = {"_target_": WSD, "_partial_": True, "interval": "step", **schedule}
    return hp


def vae_parts(hparams: dict) -> dict:
    """The flat VAE options -> `encoder`, `decoder`, `likelihood` and `prior` part dicts (the
    decoder's hidden sizes reversed, as the old code built it); today's layout unchanged."""
    hp = dict(hparams)
    if not isinstance(hp.get("prior", "normal"), str):
        return hp
    old = {k: hp.pop(k, default) for k, default in VAE_V0.items()}
    hidden = [int(h) for h in old["hidden"]]
    channels = [int(c) for c in old["channels"]]
    if old["architecture"] == "conv":
        conv = {"channels": channels, "channels_last": bool(old["channels_last"])}
        hp["encoder"] = {"_target_": "gmlab.nn.conv_autoencoder.ConvEncoder", **conv}
        hp["decoder"] = {"_target_": "gmlab.nn.conv_autoencoder.ConvDecoder", **conv}
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
    hp["prior"] = {
        "normal": {"_target_": "gmlab.distributions.priors.NormalPrior"},
        "mog": {
            "_target_": "gmlab.distributions.priors.MixturePrior",
            "n_components": int(old["n_components"]),
            "learn_weights": bool(old["learn_weights"]),
        },
        "made": {
            "_target_": "gmlab.nn.network_priors.FlowPrior",
            "hidden": [int(h) for h in old["made_hidden"]],
        },
    }[hp.get("prior", "normal")]
    return hp


# ------------------------------------- hyperparameters: (hparams, recorded version) -> today's
def gaussian(hparams: dict, version: int) -> dict:
    return flat_optimizer(hparams) if version < 1 else hparams


def vae(hparams: dict, version: int) -> dict:
    """Version 0: flat options (`vae_parts`); versions 0 and 1: the network priors' module
    was `gmlab.nn.priors`."""
    hp = flat_optimizer(vae_parts(hparams)) if version < 1 else dict(hparams)
    prior = hp.get("prior")
    name = prior.get("_target_") if isinstance(prior, dict) else None
    if version < 2 and isinstance(name, str) and name.startswith(OLD_NETWORK_PRIORS):
        hp["prior"] = {**prior, "_target_": NETWORK_PRIORS + name.removeprefix(OLD_NETWORK_PRIORS)}
    return hp


def realnvp(hparams: dict, version: int) -> dict:
    if version >= 1:
        return hparams
    hp = flat_optimizer(hparams)
    flow = {key: hp.pop(key) for key in REALNVP_FLOW_V0 if key in hp}
    hp["flow"] = {"_target_": "gmlab.nn.flows.build_realnvp", **flow}
    return hp


def vqvae(hparams: dict, version: int) -> dict:
    """Version 0: flat `lr`, `lr_schedule`; versions 0 and 1: the likelihood by name (its
    default then: discretized_logistic); versions 0 to 2: a missing quantizer meant the
    gradient-trained codebook (the Python default then; the preset's is EMA)."""
    hp = flat_optimizer(hparams) if version < 1 else dict(hparams)
    likelihood = hp.get("likelihood", "discretized_logistic")
    if version < 2 and isinstance(likelihood, str):
        hp["likelihood"] = likelihood_spec(likelihood)
    if version < 3 and not hp.get("quantizer"):
        hp["quantizer"] = dict(GRADIENT_QUANTIZER)
    return hp


def vqvae_pixelcnn(hparams: dict, version: int) -> dict:
    """As `vqvae`, also for the embedded stage-1 hyperparameters (of the same version)."""
    hp = flat_optimizer(hparams) if version < 1 else dict(hparams)
    if hp.get("vqvae"):
        hp["vqvae"] = vqvae(dict(hp["vqvae"]), version)
    return hp


def mfa(hparams: dict, version: int) -> dict:
    """Version 0 had the Adam phase built in (`em_passes`, `finetune_lr`): dropped, the
    other options mean the same."""
    if version >= 1:
        return hparams
    return {k: v for k, v in hparams.items() if k not in MFA_FINETUNE_V0}


def gmm_classifier(hparams: dict, version: int) -> dict:
    """Version 0: the optimizer by name with flat `lr`, `weight_decay`, and StepLR's
    `lr_step_size`, `lr_gamma` (None: constant lr); versions 0 and 1: the trunk's and the
    head's options flat, the head by name (`classifier_parts`); versions 0 to 2: a null
    lr_scheduler meant a constant lr (the preset's is StepLR)."""
    hp = classifier_optimizer(hparams) if version < 1 else dict(hparams)
    hp = classifier_parts(hp) if version < 2 else hp
    if version < 3 and hp.get("lr_scheduler") is None:
        hp["lr_scheduler"] = {}
    return hp


def classifier_optimizer(hparams: dict) -> dict:
    """The classifier's optimizer name, `lr`, `weight_decay`, `lr_step_size`, `lr_gamma`
    (gmlab 0.1) -> optimizer and StepLR part dicts."""
    hp = dict(hparams)
    name = hp.pop("optimizer", "adadelta")
    hp["optimizer"] = {
        **CLASSIFIER_OPTIMIZERS_V0[name],
        "_partial_": True,
        "lr": hp.pop("lr", 1.0),
        "weight_decay": hp.pop("weight_decay", 0.0),
    }
    step_size, gamma = hp.pop("lr_step_size", 1), hp.pop("lr_gamma", 0.7)
    hp["lr_scheduler"] = {}
    if gamma is not None:
        hp["lr_scheduler"] = {
            "_target_": "torch.optim.lr_scheduler.StepLR",
            "_partial_": True,
            "interval": "epoch",
            "step_size": step_size,
            "gamma": gamma,
        }
    return hp


def classifier_parts(hparams: dict) -> dict:
    """The classifier's flat options (`head: gmm | linear`, the CNN's `channels`,
    `kernel_size`, `dropout`; the GMM's `components_per_class`, `dim`, `covariance`,
    `rank`, `floor`) -> `trunk` and `head` part dicts: the CNN for images, none (the
    identity) for flat points, as the old code built them."""
    hp = dict(hparams)
    old = {k: hp.pop(k, default) for k, default in CLASSIFIER_V1.items()}
    if len(hp["data_shape"]) == 3:
        hp["trunk"] = {
            "_target_": "gmlab.nn.MnistCNN",
            "channels": [int(c) for c in old["channels"]],
            "kernel_size": old["kernel_size"],
            "dropout": old["dropout"],
        }
    else:
        hp["trunk"] = {"_target_": "gmlab.models.gmm_classifier.IdentityTrunk"}
    hp["head"] = {"_target_": "gmlab.nn.gmm_layer.LinearClassifier"}
    if old["head"] == "gmm":
        gmm = {k: old[k] for k in ("components_per_class", "dim", "covariance", "rank", "floor")}
        hp["head"] = {"_target_": "gmlab.nn.GaussianMixtureClassifier", **gmm}
    return hp


# the class a checkpoint records -> its hyperparameters' converter
HPARAMS: dict[str, Callable[[dict, int], dict]] = {
    "gmlab.models.gaussian.DiagonalGaussian": gaussian,
    "gmlab.models.vae.VAE": vae,
    "gmlab.models.realnvp.RealNVP": realnvp,
    "gmlab.models.vqvae.VQVAE": vqvae,
    "gmlab.models.vqvae.VQVAEPixelCNN": vqvae_pixelcnn,
    "gmlab.models.mfa.MFAModel": mfa,
    "gmlab.models.gmm_classifier.GMMClassifier": gmm_classifier,
}


# --------------------------------------------------- weights of version 0, renamed in place
def weight_norm_names(state_dict: dict) -> None:
    """`<conv>.parametrizations.weight.original0/1` (torch's weight-norm parametrization)
    -> `<conv>.weight_g` / `<conv>.weight_v` of `WeightNormConv2d`: the same tensors."""
    for key in list(state_dict):
        for old, new in WEIGHT_NORM_V0.items():
            if key.endswith("." + old):
                state_dict[key[: -len(old)] + new] = state_dict.pop(key)


def codebook_state(state_dict: dict) -> None:
    """A codebook saved without the init / revival state (`<prefix>quantizer.codebook`
    [K, D] alone) gets the state it implies: initialized, no steps counted."""
    for key in [k for k in state_dict if k.endswith("quantizer.codebook")]:
        prefix, num_codes = key[: -len("codebook")], state_dict[key].shape[0]
        state_dict.setdefault(prefix + "initialized", torch.tensor(True))
        state_dict.setdefault(prefix + "steps", torch.zeros((), dtype=torch.long))
        state_dict.setdefault(prefix + "unused_steps", torch.zeros(num_codes, dtype=torch.long))


STATE_V0: dict[str, Callable[[dict], None]] = {
    "gmlab.models.realnvp.RealNVP": weight_norm_names,
    "gmlab.models.vqvae.VQVAE": codebook_state,
    "gmlab.models.vqvae.VQVAEPixelCNN": codebook_state,
}


# ---------------------------------------------------------------------------- entry point
def current_version(name: str) -> int:
    """`checkpoint_version` of the registered class `name` (a key of `HPARAMS`)."""
    module, _, qualname = name.rpartition(".")
    return getattr(importlib.import_module(module), qualname).checkpoint_version


def upgrade_checkpoint(checkpoint: dict) -> None:
    """In place: a checkpoint of an older version of its (registered) class -> today's
    hyperparameters, weight names and version. Others are left as they are."""
    info = checkpoint.get("gmlab")
    name = info.get("class") if isinstance(info, dict) else None
    if name not in HPARAMS:
        return
    version, current = info.get("version", 0), current_version(name)
    if version >= current:
        return
    if isinstance(checkpoint.get("hyper_parameters"), dict):
        checkpoint["hyper_parameters"] = HPARAMS[name](
            dict(checkpoint["hyper_parameters"]), version
        )
    if version < 1 and name in STATE_V0 and isinstance(checkpoint.get("state_dict"), dict):
        STATE_V0[name](checkpoint["state_dict"])
    info["version"] = current
