"""CIFAR-10 (pickled batches) and SVHN (.mat files) through the real DataModules."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from gmlab.data import CIFAR10DataModule, SVHNDataModule
from gmlab.errors import DataNotFoundError


# --------------------------------------------------------------------------- CIFAR-10
def test_cifar10_round_trip(cifar_root):
    root, written = cifar_root
    dm = CIFAR10DataModule(root=str(root), val_size=0)
    dm.setup()
    for split in ("train", "test"):
        x, y = dm.tensors(split)
        assert x.dtype == torch.uint8 and x.shape == (len(written[split][0]), 3, 32, 32)
        assert np.array_equal(x.numpy(), written[split][0])  # channels and rows in place
        assert np.array_equal(y.numpy(), written[split][1])
    folder = root / "cifar-10-batches-py"
    assert (folder / "gmlab_cache_cifar10_train.mmap").is_file()


def test_cifar10_val_split(cifar_root, files):
    root, _ = cifar_root
    dm = CIFAR10DataModule(root=str(root), val_size=0.25)
    dm.setup()
    train = files.image_index(dm.tensors("train")[0])
    val = files.image_index(dm.tensors("val")[0])
    assert len(val) == 25 and sorted([*train, *val]) == list(range(100))


def test_cifar10_missing_batch(cifar_root):
    root, _ = cifar_root
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataNotFoundError) as err:
        CIFAR10DataModule(root=str(root)).setup()
    msg = str(err.value)
    assert "but test_batch is missing" in msg and "data.download=true" in msg
    assert str((root / "cifar-10-batches-py").resolve()) in msg


@pytest.mark.parametrize(
    ("name", "damage", "why"),
    [
        ("data_batch_3", lambda b: b[: len(b) // 3], "truncated"),
        ("data_batch_5", lambda b: b"\x00garbage" + b[8:], "UnpicklingError"),
        ("batches.meta", lambda b: pickle.dumps({"nothing": 1}), "no 'label_names' entry"),
    ],
)
def test_cifar10_corrupt_batch_is_named(cifar_root, name, damage, why):
    root, _ = cifar_root
    path = root / "cifar-10-batches-py" / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataNotFoundError) as err:
        CIFAR10DataModule(root=str(root), cache=False).setup()
    msg = str(err.value)
    assert f"file {path.resolve()} is truncated or corrupt" in msg and why in msg


def test_cifar10_batch_with_wrong_row_size(cifar_root):
    root, _ = cifar_root
    path = root / "cifar-10-batches-py" / "data_batch_2"
    entry = pickle.loads(path.read_bytes())
    entry["data"] = entry["data"][:, :3000]
    path.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(
        DataNotFoundError, match=r"data_batch_2 is truncated or corrupt.*expected \[N, 3072\]"
    ):
        CIFAR10DataModule(root=str(root), cache=False).setup()


# ------------------------------------------------------------------------------- SVHN
def test_svhn_round_trip_with_label_10_as_digit_0(svhn_root):
    root, written = svhn_root
    dm = SVHNDataModule(root=str(root), val_size=0)
    dm.setup()
    for split in ("train", "test"):
        x, y = dm.tensors(split)
        assert x.dtype == torch.uint8 and x.shape == (len(written[split][0]), 3, 32, 32)
        assert np.array_equal(x.numpy(), written[split][0])
        assert np.array_equal(y.numpy(), written[split][1])
    assert set(dm.tensors("train")[1].tolist()) == set(range(10))
    assert (root / "gmlab_cache_svhn_train.mmap").is_file()


def test_svhn_extra_is_appended_to_train(svhn_root, files):
    import scipy.io

    root, written = svhn_root
    x = files.numbered_images(15, (3, 32, 32), 77)
    scipy.io.savemat(
        root / "extra_32x32.mat",
        {"X": x.transpose(2, 3, 1, 0), "y": np.full((15, 1), 10, np.uint8)},
    )
    dm = SVHNDataModule(root=str(root), val_size=0, extra=True)
    dm.setup()
    x_train, y_train = dm.tensors("train")
    assert np.array_equal(x_train.numpy(), np.concatenate([written["train"][0], x]))
    assert y_train[-15:].tolist() == [0] * 15
    assert (root / "gmlab_cache_svhn_train+extra.mmap").is_file()
    with pytest.raises(DataNotFoundError, match="but extra_32x32.mat is missing"):
        (root / "extra_32x32.mat").unlink()
        SVHNDataModule(root=str(root), extra=True, cache=False).setup()


def test_svhn_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        SVHNDataModule(root=str(tmp_path)).setup()
    msg = str(err.value)
    assert "train_32x32.mat, test_32x32.mat" in msg and str(tmp_path.resolve()) in msg


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda b: b[: len(b) // 2], "truncated or corrupt"),
        (lambda b: b"\x01" * 200, "truncated or corrupt"),
    ],
)
def test_svhn_corrupt_mat_file_is_named(svhn_root, damage, why):
    root, _ = svhn_root
    path = root / "test_32x32.mat"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataNotFoundError) as err:
        SVHNDataModule(root=str(root), cache=False).setup()
    assert f"file {path.resolve()}" in str(err.value) and why in str(err.value)


def test_svhn_mat_with_wrong_layout(svhn_root):
    import scipy.io

    root, _ = svhn_root
    path = root / "test_32x32.mat"
    scipy.io.savemat(path, {"X": np.zeros((25, 3, 32, 32), np.uint8), "y": np.ones((25, 1))})
    with pytest.raises(DataNotFoundError, match=r"expected X \[32, 32, 3, N\]"):
        SVHNDataModule(root=str(root), cache=False).setup()
