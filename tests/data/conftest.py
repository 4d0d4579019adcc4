"""Tiny datasets written in each dataset's real on-disk format (the layouts torchvision
reads), so the tests run the real DataModule code on them. Every writer returns the
arrays it wrote: {split: (images uint8 [N, C, H, W], labels int64 [N])}."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (MNIST) file: magic 0x00000800 + ndim, big-endian uint32 sizes, uint8 data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def numbered_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random uint8 images whose first two pixels hold the image's index (to trace splits)."""
    x = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    flat = x.reshape(n, -1)
    flat[:, 0], flat[:, 1] = np.arange(n) // 256, np.arange(n) % 256
    return x


def image_index(x) -> np.ndarray:
    """Inverse of `numbered_images`: the index stored in each image."""
    flat = np.asarray(x).reshape(len(x), -1).astype(np.int64)
    return flat[:, 0] * 256 + flat[:, 1]


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 300, n_test: int = 40):
    raw = root / folder / "raw"
    out = {}
    for split, prefix, n, seed in (("train", "train", n_train, 1), ("test", "t10k", n_test, 2)):
        x = numbered_images(n, (28, 28), seed)
        y = np.random.default_rng(seed + 10).integers(0, 10, n).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        out[split] = (x[:, None], y.astype(np.int64))
    return out


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 30):
    """cifar-10-batches-py/: data_batch_1..5 and test_batch are pickled dicts with
    'data' [n, 3072] uint8 (1024 red, 1024 green, 1024 blue values, rows first) and
    'labels'; batches.meta holds 'label_names'."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    meta = {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    x_train = numbered_images(5 * per_batch, (3, 32, 32), 3)
    y_train = np.random.default_rng(4).integers(0, 10, 5 * per_batch)
    x_test = numbered_images(n_test, (3, 32, 32), 5)
    y_test = np.random.default_rng(6).integers(0, 10, n_test)
    files = [(f"data_batch_{b + 1}", slice(b * per_batch, (b + 1) * per_batch)) for b in range(5)]
    for name, rows in files + [("test_batch", slice(0, n_test))]:
        x, y = (x_test, y_test) if name == "test_batch" else (x_train, y_train)
        entry = {
            "batch_label": name,
            "labels": [int(v) for v in y[rows]],
            "data": x[rows].reshape(-1, 3072),
            "filenames": [f"img_{i}.png" for i in range(len(y[rows]))],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def write_svhn(root: Path, n_train: int = 60, n_test: int = 25):
    """train_32x32.mat / test_32x32.mat directly in root: X [32, 32, 3, N] uint8 (H, W, C,
    N) and y [N, 1] with labels 1..10, where 10 is the digit 0."""
    import scipy.io

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, seed in (("train", n_train, 7), ("test", n_test, 8)):
        x = numbered_images(n, (3, 32, 32), seed)  # [N, C, H, W]
        digits = np.arange(n) % 10  # every digit, 0 included
        y_file = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": y_file})
        out[split] = (x, digits.astype(np.int64))
    return out


CELEBA_ATTRS = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald"]


def write_celeba(root: Path, partition=(0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2), colours=None):
    """celeba/img_align_celeba/000001.jpg ... (178 wide, 218 high) and the five list
    files in their real layout (three of them start with a count line and a header)."""
    from PIL import Image

    folder = root / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    rng = np.random.default_rng(9)
    n = len(partition)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    yy, xx = np.mgrid[0:218, 0:178]
    pixels = []
    for i, name in enumerate(names):
        if colours is not None:
            img = np.broadcast_to(np.array(colours[i], dtype=np.uint8), (218, 178, 3))
        else:  # smooth, face-sized structure so that JPEG keeps it well
            phase = rng.uniform(0, 6, 3)
            img = 128 + 90 * np.sin(xx[..., None] / 17 + phase) * np.cos(yy[..., None] / 23)
            img = img.clip(0, 255).astype(np.uint8)
        Image.fromarray(np.ascontiguousarray(img)).save(images / name, quality=95)
        pixels.append(img)
    identity = rng.integers(1, 10178, n)

    def rows(values):
        return "".join(
            f"{name} {' '.join(f'{v:>3}' for v in vs)}\n"
            for name, vs in zip(names, values, strict=True)
        )

    (folder / "list_eval_partition.txt").write_text(rows([[p] for p in partition]))
    (folder / "identity_CelebA.txt").write_text(rows([[v] for v in identity]))
    attrs = rng.choice([-1, 1], (n, len(CELEBA_ATTRS)))
    (folder / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(CELEBA_ATTRS)} \n" + rows(attrs))
    bbox = rng.integers(50, 300, (n, 4))
    (folder / "list_bbox_celeba.txt").write_text(
        f"{n}\nimage_id x_1 y_1 width height\n" + rows(bbox)
    )
    marks = rng.integers(60, 160, (n, 10))
    head = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
    head += "leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    (folder / "list_landmarks_align_celeba.txt").write_text(f"{n}\n{head}\n" + rows(marks))
    return {
        "files": [images / name for name in names],
        "partition": np.array(partition),
        "identity": identity,
        "pixels": pixels,
    }


@pytest.fixture
def mnist_root(tmp_path):
    """(root, written arrays) of a tiny MNIST in torchvision's raw layout."""
    return tmp_path, write_mnist(tmp_path)


@pytest.fixture
def cifar_root(tmp_path):
    return tmp_path, write_cifar10(tmp_path)


@pytest.fixture
def svhn_root(tmp_path):
    return tmp_path, write_svhn(tmp_path)


@pytest.fixture
def celeba_root(tmp_path):
    return tmp_path, write_celeba(tmp_path)


@pytest.fixture
def files():
    """The writers and helpers above, for tests that build their own variants."""
    import types

    return types.SimpleNamespace(
        write_idx=write_idx,
        write_mnist=write_mnist,
        write_cifar10=write_cifar10,
        write_svhn=write_svhn,
        write_celeba=write_celeba,
        numbered_images=numbered_images,
        image_index=image_index,
    )
