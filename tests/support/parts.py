"""Part dicts read from the config groups under conf/model/<group>/, for building models
directly in tests."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"


def part(group: str, name: str, **options) -> dict:
    """conf/model/<group>/<name>.yaml as a plain dict, with `options` set (interpolations of
    other model keys, such as the MLP decoder's default sizes, must be given as options)."""
    cfg = OmegaConf.load(CONF / group / f"{name}.yaml")
    cfg = OmegaConf.merge(cfg, options)
    return OmegaConf.to_container(cfg, resolve=True)


def mlp_parts(hidden: list[int], activation: str = "relu") -> dict:
    """The encoder/decoder keywords of a VAE with MLPs of `hidden` sizes (decoder mirrored)."""
    return {
        "encoder": part("encoder", "mlp", hidden=hidden, activation=activation),
        "decoder": part("decoder", "mlp", hidden=hidden[::-1], activation=activation),
    }
