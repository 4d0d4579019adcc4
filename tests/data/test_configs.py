"""conf/data/*.yaml: each builds its DataModule, whose samples have the configured shape;
a missing dataset on the command line is one clear paragraph, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf
from support.cli import gmlab
from support.compose import train_config

from gmlab.data import CachedDataModule
from gmlab.errors import ShapeError
from gmlab.train import train

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"
WRITERS = {
    "mnist": lambda f, root: f.write_mnist(root, n_train=20, n_test=5),
    "fashion_mnist": lambda f, root: f.write_mnist(root, "FashionMNIST", n_train=20, n_test=5),
    "cifar10": lambda f, root: f.write_cifar10(root, per_batch=4, n_test=5),
    "svhn": lambda f, root: f.write_svhn(root, n_train=20, n_test=5),
    "celeba32": lambda f, root: f.write_celeba(root),
    "celeba64": lambda f, root: f.write_celeba(root),
    "toy2d": lambda f, root: None,
    # out-of-distribution sets (gmlab.data.ood): no files, or MNIST's
    "digits28": lambda f, root: None,
    "noise": lambda f, root: None,
    "constant": lambda f, root: None,
    **{
        f"mnist_{t}": lambda f, root: f.write_mnist(root, n_train=20, n_test=5)
        for t in ("inverted", "hflip", "vflip", "rot90")
    },
}
NO_FILES = {"toy2d", "digits28", "noise", "constant"}


def data_config(name: str, root: Path, **overrides):
    cfg = OmegaConf.create(
        {"paths": {"data_dir": str(root)}, "data": OmegaConf.load(CONF / f"{name}.yaml")}
    )
    for key, value in overrides.items():
        OmegaConf.update(cfg, f"data.{key}", value)
    return cfg.data


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_config_builds_its_datamodule(name, tmp_path, files):
    WRITERS[name](files, tmp_path)
    overrides = {"val_size": 4}
    if name == "toy2d":
        overrides.update(train_size=30, test_size=5)
    cfg = data_config(name, tmp_path, **overrides)
    assert cfg.download is False if "download" in cfg else name in NO_FILES
    dm = hydra.utils.instantiate(cfg)
    dm.setup()
    for split in ("train", "val", "test"):
        x, y = dm.tensors(split)
        assert list(x.shape[1:]) == list(cfg.shape) and len(x) == len(y) > 0
        assert y.max() < dm.num_classes
    if isinstance(dm, CachedDataModule):
        assert dm.root == tmp_path and dm.cache_path("train").is_file()


def test_val_size_larger_than_train_is_a_clear_error(tmp_path):
    dm = hydra.utils.instantiate(data_config("toy2d", tmp_path, train_size=30, val_size=30))
    with pytest.raises(ShapeError, match="data.val_size=30 leaves no training samples"):
        dm.setup()


def test_every_data_config_is_covered():
    assert {p.stem for p in CONF.glob("*.yaml")} - {"digits"} == set(WRITERS)


def test_missing_dataset_on_the_command_line(tmp_path, run_env):
    args = ["data=mnist", f"data.root={tmp_path}", "model=gaussian"]
    out = gmlab("gmlab-train", [*args, f"hydra.run.dir={tmp_path / 'run'}"], run_env, check=False)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    error = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "MNIST not found" in error[0] and str(tmp_path) in error[0]


def test_eval_finds_moved_data_through_data_root(tmp_path, run_env, files):
    """gmlab-eval takes the data config stored in the checkpoint, but not its folder: without
    `data.root=` it looks in this machine's data folder (paths.data_dir), never where the
    file says; `data.root=` alone points it at the data, and the metrics match the training
    run's test."""
    old, new = tmp_path / "old", tmp_path / "new"
    files.write_mnist(old, n_train=200, n_test=30)
    run = tmp_path / "run"
    data = ["data=mnist", f"data.root={old}", "data.val_size=40"]
    train(train_config(run, [*data, "model=gaussian", "trainer.max_epochs=1"]))  # in-process
    old.rename(new)
    best = str(next((run / "checkpoints").glob("best-*.ckpt")))

    stale = gmlab(
        "gmlab-eval", [f"ckpt_path={best}", f"hydra.run.dir={tmp_path / 's'}"], run_env, check=False
    )
    assert stale.returncode == 1 and "MNIST not found" in stale.stderr
    assert str(old) not in stale.stderr  # the checkpoint's stored root is not used
    moved = tmp_path / "moved"
    args = [f"ckpt_path={best}", f"data.root={new}", "seed=12345", f"hydra.run.dir={moved}"]
    out = gmlab("gmlab-eval", args, run_env)
    trained = json.loads((run / "metrics.json").read_text())
    evaluated = json.loads((moved / "metrics.json").read_text())
    assert evaluated["test/bpd"] == pytest.approx(trained["test/bpd"], abs=1e-6)
    assert "Traceback" not in stale.stderr + out.stderr
