"""MNIST / Fashion-MNIST through the real DataModule on tiny IDX files, and the decoded-data
cache every image dataset shares (written atomically, reused, rebuilt when stale)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gmlab.data import FashionMNISTDataModule, MNISTDataModule
from gmlab.data import mapped as mapped_module
from gmlab.errors import DataNotFoundError

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_pixels_and_labels_round_trip(mnist_root):
    root, written = mnist_root
    dm = MNISTDataModule(root=str(root), val_size=0)
    dm.setup()
    for split in ("train", "test"):
        x, y = dm.tensors(split)
        assert x.dtype == torch.uint8 and x.shape == (len(written[split][0]), 1, 28, 28)
        assert y.dtype == torch.int64
        assert np.array_equal(x.numpy(), written[split][0])
        assert np.array_equal(y.numpy(), written[split][1])


def test_val_split_is_seeded_disjoint_and_complete(mnist_root, files):
    root, written = mnist_root
    first = MNISTDataModule(root=str(root), val_size=50, split_seed=3)
    again = MNISTDataModule(root=str(root), val_size=50, split_seed=3, cache=False)
    other = MNISTDataModule(root=str(root), val_size=50, split_seed=4, cache=False)
    idx = {}
    for name, dm in (("first", first), ("again", again), ("other", other)):
        dm.setup()
        idx[name] = {s: files.image_index(dm.tensors(s)[0][:, 0]) for s in ("train", "val")}
    train, val = idx["first"]["train"], idx["first"]["val"]
    assert len(val) == 50 and len(train) == 250
    assert not set(train) & set(val)
    assert sorted([*train, *val]) == list(range(300))
    assert np.array_equal(val, idx["again"]["val"])  # same seed: same split
    assert not np.array_equal(val, idx["other"]["val"])
    # labels travel with their images
    x_val, y_val = first.tensors("val")
    assert np.array_equal(y_val.numpy(), written["train"][1][files.image_index(x_val[:, 0])])


def test_batches_cover_the_split_once_per_epoch(mnist_root, files):
    root, _ = mnist_root
    dm = MNISTDataModule(root=str(root), val_size=0.2, batch_size=32)
    dm.setup()
    seen = np.concatenate([files.image_index(x[:, 0]) for x, _ in dm.train_dataloader()])
    assert sorted(seen) == sorted(files.image_index(dm.tensors("train")[0][:, 0]))
    assert len(dm.val_dataloader()) == 2  # 60 val images in batches of 32


def test_fashion_mnist_reads_its_own_folder(tmp_path, files):
    written = files.write_mnist(tmp_path, folder="FashionMNIST", n_train=30, n_test=10)
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=0)
    dm.setup()
    assert np.array_equal(dm.tensors("test")[0].numpy(), written["test"][0])
    assert (tmp_path / "FashionMNIST" / "raw" / "gmlab_cache_fashionmnist_train.mmap").is_file()
    with pytest.raises(DataNotFoundError, match="MNIST not found"):
        MNISTDataModule(root=str(tmp_path)).setup()


# ------------------------------------------------------------------------------ cache
def test_cache_is_written_beside_the_raw_files_and_reused(mnist_root, monkeypatch):
    root, written = mnist_root
    raw = root / "MNIST" / "raw"
    MNISTDataModule(root=str(root)).setup()
    caches = sorted(p.name for p in raw.glob("gmlab_cache_*"))
    assert caches == ["gmlab_cache_mnist_test.mmap", "gmlab_cache_mnist_train.mmap"]
    assert not list(raw.glob(".*.tmp"))

    def no_reading(self, split):
        raise AssertionError("raw files read although the cache is fresh")

    monkeypatch.setattr(MNISTDataModule, "read_split", no_reading)
    dm = MNISTDataModule(root=str(root), val_size=0)
    dm.setup()
    assert np.array_equal(dm.tensors("train")[0].numpy(), written["train"][0])


def test_cache_older_than_a_raw_file_is_rebuilt(mnist_root, files):
    root, _ = mnist_root
    MNISTDataModule(root=str(root)).setup()
    # replace the test images; their file is now newer than the cache
    new = files.numbered_images(40, (28, 28), seed=99)
    images = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    files.write_idx(images, new)
    future = time.time() + 10
    os.utime(images, (future, future))
    dm = MNISTDataModule(root=str(root))
    dm.setup()
    assert np.array_equal(dm.tensors("test")[0][:, 0].numpy(), new)


def test_cache_survives_deleted_raw_files_and_a_corrupt_cache_is_rebuilt(mnist_root, caplog):
    root, written = mnist_root
    raw = root / "MNIST" / "raw"
    MNISTDataModule(root=str(root)).setup()
    cache = raw / "gmlab_cache_mnist_test.mmap"
    cache.write_bytes(cache.read_bytes()[:1000])  # torn file
    with caplog.at_level(logging.WARNING):
        dm = MNISTDataModule(root=str(root))
        dm.setup()
    assert "unreadable" in caplog.text
    assert np.array_equal(dm.tensors("test")[0].numpy(), written["test"][0])
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (raw / name).unlink()
    dm = MNISTDataModule(root=str(root))  # the (rebuilt) caches are all there is now
    dm.setup()
    assert np.array_equal(dm.tensors("test")[0].numpy(), written["test"][0])


def test_cache_dir_and_read_only_folders(mnist_root, tmp_path, caplog):
    root, written = mnist_root
    elsewhere = tmp_path / "cache"
    dm = MNISTDataModule(root=str(root), cache_dir=str(elsewhere))
    dm.setup()
    assert dm.cache_path("train").parent == elsewhere and dm.cache_path("train").is_file()
    assert not list((root / "MNIST" / "raw").glob("gmlab_cache_*"))

    raw = root / "MNIST" / "raw"
    raw.chmod(0o555)  # also read-only for root, by its mode bits
    try:
        with caplog.at_level(logging.INFO):
            dm = MNISTDataModule(root=str(root), val_size=0)
            dm.setup()
    finally:
        raw.chmod(0o755)
    assert "data.cache_dir" in caplog.text
    assert not list(raw.glob("gmlab_cache_*")) and not list(raw.glob(".*.tmp"))
    assert np.array_equal(dm.tensors("train")[0].numpy(), written["train"][0])


def test_roots_sharing_a_cache_dir_keep_their_own_data(tmp_path, files):
    a = files.write_mnist(tmp_path / "a", n_train=30, n_test=10)
    b = files.write_mnist(tmp_path / "b", n_train=30, n_test=10)  # same names and sizes
    b["test"][0][:] = 255 - b["test"][0]
    files.write_idx(tmp_path / "b" / "MNIST" / "raw" / "t10k-images-idx3-ubyte", b["test"][0][:, 0])
    for _ in range(2):
        for root, written in (("a", a), ("b", b)):
            dm = MNISTDataModule(root=str(tmp_path / root), cache_dir=str(tmp_path / "cache"))
            dm.setup()
            assert np.array_equal(dm.tensors("test")[0].numpy(), written["test"][0])
    assert len(list((tmp_path / "cache").glob("gmlab_cache_mnist_test_*.mmap"))) == 2


def test_failed_cache_write_leaves_no_partial_file(mnist_root, monkeypatch, caplog):
    root, written = mnist_root

    def full_disk(f, array):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mapped_module, "_write_array", full_disk)
    dm = MNISTDataModule(root=str(root), val_size=0)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert "No space left on device" in caplog.text
    assert np.array_equal(dm.tensors("test")[0].numpy(), written["test"][0])
    assert not list((root / "MNIST" / "raw").glob("*gmlab_cache*"))


def test_prepare_data_decodes_once_for_setup(mnist_root, monkeypatch):
    root, _ = mnist_root
    dm = MNISTDataModule(root=str(root), cache=False)
    calls = []
    read = MNISTDataModule.read_split
    monkeypatch.setattr(
        MNISTDataModule, "read_split", lambda s, split: calls.append(split) or read(s, split)
    )
    dm.prepare_data()
    dm.setup()
    dm.prepare_data()  # a second trainer.fit/test: nothing decoded or held again
    assert calls == ["train", "test"] and not dm._decoded


def test_cache_of_files_with_other_sizes_is_rebuilt_despite_old_mtimes(mnist_root, files):
    root, _ = mnist_root
    MNISTDataModule(root=str(root)).setup()
    images = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    labels = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    new = files.numbered_images(7, (28, 28), seed=5)
    files.write_idx(images, new)
    files.write_idx(labels, np.arange(7, dtype=np.uint8))
    for path in (images, labels):  # as `cp -p` of an older copy would leave them
        os.utime(path, (1e9, 1e9))
    dm = MNISTDataModule(root=str(root))
    dm.setup()
    assert np.array_equal(dm.tensors("test")[0][:, 0].numpy(), new)


# ----------------------------------------------------------------------------- errors
def test_missing_dataset_names_the_files_and_the_remedy(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        MNISTDataModule(root=str(tmp_path / "nowhere")).setup()
    msg = str(err.value)
    assert str((tmp_path / "nowhere" / "MNIST" / "raw").resolve()) in msg
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "data.download=true" in msg and "\n" not in msg


def test_one_missing_file_is_named(mnist_root):
    root, _ = mnist_root
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataNotFoundError, match=r"but t10k-labels-idx1-ubyte is missing"):
        MNISTDataModule(root=str(root), cache=False).setup()


@pytest.mark.parametrize(
    ("name", "damage", "why"),
    [
        ("train-images-idx3-ubyte", lambda b: b[: len(b) // 2], "header says 300 x 28 x 28"),
        ("train-labels-idx1-ubyte", lambda b: b[:6], "too short for an IDX header"),
        ("t10k-images-idx3-ubyte", lambda b: b"\x00\x00\x08\x01" + b[4:], "magic number"),
        ("t10k-labels-idx1-ubyte", lambda b: b + b"\x00", "the file has 49"),
    ],
)
def test_truncated_or_corrupt_idx_file_is_named(mnist_root, name, damage, why):
    root, _ = mnist_root
    path = root / "MNIST" / "raw" / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataNotFoundError) as err:
        MNISTDataModule(root=str(root), cache=False).setup()
    msg = str(err.value)
    assert f"file {path.resolve()} is truncated or corrupt" in msg and why in msg


def test_images_and_labels_of_different_lengths(mnist_root, files):
    root, _ = mnist_root
    files.write_idx(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(39, np.uint8))
    with pytest.raises(DataNotFoundError, match="40 images but 39 labels"):
        MNISTDataModule(root=str(root), cache=False).setup()


def test_download_is_asked_only_for_missing_files(tmp_path, monkeypatch, files):
    fetched = []

    def fake_fetch(self):  # stands in for torchvision's download (no network in tests)
        fetched.append(True)
        files.write_mnist(self.root, n_train=20, n_test=5)

    monkeypatch.setattr(MNISTDataModule, "fetch", fake_fetch)
    MNISTDataModule(root=str(tmp_path), download=True, val_size=0).setup()
    MNISTDataModule(root=str(tmp_path), download=True, val_size=0, cache=False).setup()
    assert fetched == [True]

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(MNISTDataModule, "fetch", offline)
    with pytest.raises(DataNotFoundError, match="downloading into .* failed .*Error downloading"):
        MNISTDataModule(root=str(tmp_path / "empty"), download=True).setup()


@pytest.mark.skipif(
    not (SHARED_MNIST / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file(),
    reason="no ../shared/data/MNIST",
)
def test_real_mnist_in_the_shared_folder(tmp_path):
    dm = MNISTDataModule(root=str(SHARED_MNIST), cache_dir=str(tmp_path), val_size=5000)
    dm.setup()
    x, y = dm.tensors("test")
    assert x.shape == (10000, 1, 28, 28) and len(dm.tensors("train")[0]) == 55000
    assert y[:5].tolist() == [7, 2, 1, 0, 4]  # the first MNIST test digits
    assert torch.bincount(y).tolist()[:2] == [980, 1135]
