"""Building a model's parts (priors, likelihoods, networks, flows, optimizers) from their
config dicts.

A part is a plain dict with a `_target_` (a class or function path) and its options, as the
config groups under `conf/model/<part>/` write it. Models keep these dicts in their
hyperparameters, so checkpoints stay plain data (`weights_only=True`), and build the part
themselves, supplying what only the model knows (a latent size, the parameters to optimize).

A model's constructor defaults for its parts come from the same files (`preset_part`), so the
YAML presets are the one place where a default is written.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from gmlab.errors import ConfigError
from gmlab.utils.runs import PROJECT_ROOT

MODEL_CONF = PROJECT_ROOT / "conf" / "model"


def build_part(spec: Mapping | None, role: str, **supplied: Any) -> Any:
    """Instantiate the part `spec` (dict with `_target_`) with the model's `supplied` arguments.

    `_partial_: true` means what it means to Hydra: the config alone is incomplete; Hydra
    builds a partial, and the model's `supplied` arguments complete it.

    `role` names the option in errors (`model.<role>`). A key given both in `spec` and in
    `supplied` is an error, so a config cannot silently fight the model over, say, the
    latent size.
    """
    if spec is None:
        raise ConfigError(f"model.{role} is not set: choose one with `model/{role}=<name>`")
    if OmegaConf.is_config(spec):
        spec = OmegaConf.to_container(spec, resolve=True)
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise ConfigError(f"model.{role} must be a config with a `_target_`, got {spec!r}")
    clash = sorted(set(spec) & set(supplied) - {"_partial_"})
    if clash:
        raise ConfigError(
            f"model.{role}.{clash[0]} is set by the model itself; remove it from the config"
        )
    try:
        built = hydra.utils.instantiate(dict(spec), **supplied, _convert_="all")
        return built() if isinstance(built, functools.partial) else built
    except Exception as exc:  # noqa: BLE001 - any failure to build names the part
        cause = exc.__cause__ or exc  # the target's own error, which Hydra wraps
        raise ConfigError(
            f"cannot build model.{role} ({spec['_target_']}): {type(cause).__name__}: {cause}"
        ) from exc


def preset_part(model: str, group: str) -> dict:
    """The `group` part config that `gmlab-train model=<model>` composes, as a plain dict: the
    option that the defaults list of conf/model/<model>.yaml picks from conf/model/<group>/,
    with that file's own `<group>:` options over it (its `_self_` comes last, as Hydra merges).
    A model takes the defaults of its parts from here, so the YAML is their one place;
    `tests/models/test_presets.py` compares the result with Hydra's composition."""
    path = MODEL_CONF / f"{model}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"model.{group} is not set, and {path}, which holds its default, does not exist "
            "(gmlab installed without its conf/ folder): pass the part config explicitly"
        )
    defaults, model = composed_model(path)
    choices = [entry[group] for entry in defaults if isinstance(entry, dict) and group in entry]
    if len(choices) != 1 or defaults[-1] != "_self_":
        raise ValueError(f"{path}: expected one `- {group}: <option>` and `_self_` last")
    return OmegaConf.to_container(model[group], resolve=True)


@functools.lru_cache(maxsize=64)
def composed_model(path: Path) -> tuple[list, DictConfig]:
    """(defaults list, model node) of the model file `path`: the node with the file of each
    part its defaults list picks merged under its own options, as Hydra composes it, so that
    a part's relative interpolations (the decoder's `${oc.select:..encoder.hidden,...}`) see
    its sibling parts. Read once per process (a model build asks for several parts); the
    node is read-only, callers take plain copies of it."""
    node = OmegaConf.load(path)
    defaults = OmegaConf.to_container(node.pop("defaults", []))
    parts = {
        name: OmegaConf.load(path.parent / name / f"{option}.yaml")
        for entry in defaults
        if isinstance(entry, dict)
        for name, option in entry.items()
    }
    model = OmegaConf.merge(parts, node)
    OmegaConf.set_readonly(model, True)
    return defaults, model


def scheduler_or_preset(lr_scheduler: Mapping | None, model: str) -> dict:
    """`lr_scheduler` as a dict, or the preset's (`preset_part(model, "lr_scheduler")`) when
    it is None; an empty dict stays empty: no scheduler, as `model/lr_scheduler=none`."""
    return preset_part(model, "lr_scheduler") if lr_scheduler is None else dict(lr_scheduler)
