"""The memory-mapped decoded-data cache: its file layout, splits as index arrays into the
mapping, batches identical to in-memory ones, old `torch.save` caches converted, and
anonymous memory far below the file size while a pass over a large cache runs."""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from gmlab.data import MNISTDataModule
from gmlab.data.mapped import CacheFileError, read_mapped, write_mapped
from gmlab.data.split import gather_rows

MNIST_FILES = {  # the sizes of IDX files of N images / labels
    "train-images-idx3-ubyte": lambda n: 16 + 784 * n,
    "train-labels-idx1-ubyte": lambda n: 8 + n,
}


def write_by_hand(path: Path, x_shape, fill, y: np.ndarray, meta: dict) -> None:
    """A cache file laid out as `gmlab.data.mapped`'s docstring says, x written through a
    numpy memmap in chunks by `fill(start, stop) -> uint8 [stop - start, ...]`."""
    header = json.dumps(
        {"format": 2, "x_shape": list(x_shape), "x_dtype": "|u1", "y_dtype": "<i8", "meta": meta},
        sort_keys=True,
    ).encode()
    x_off = -(-(16 + len(header)) // 4096) * 4096
    x_bytes = int(np.prod(x_shape))
    y_off = -(-(x_off + x_bytes) // 64) * 64
    with open(path, "wb") as f:
        f.write(b"GMLABMM\0" + struct.pack("<Q", len(header)) + header)
        f.truncate(y_off + 8 * len(y))
    x = np.memmap(path, dtype=np.uint8, mode="r+", offset=x_off, shape=tuple(x_shape))
    chunk = 20_000
    for start in range(0, x_shape[0], chunk):
        stop = min(start + chunk, x_shape[0])
        x[start:stop] = fill(start, stop)
    x.flush()
    del x
    y_map = np.memmap(path, dtype="<i8", mode="r+", offset=y_off, shape=(len(y),))
    y_map[:] = y
    y_map.flush()


def test_file_layout_round_trip_and_the_mapping(tmp_path):
    x = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8)
    y = torch.arange(37) * 3 - 5
    path = tmp_path / "c.mmap"
    write_mapped(path, x, y, {"tag": [1, 2]})
    got_x, got_y, meta = read_mapped(path)
    assert torch.equal(got_x, x) and torch.equal(got_y, y) and meta == {"tag": [1, 2]}
    assert str(path) in Path("/proc/self/maps").read_text()  # a mapping, not a read
    got_x[0] = 0  # copy-on-write: the file keeps its bytes
    assert torch.equal(read_mapped(path)[0], x)
    # a file written by hand from the documented layout reads back the same
    by_hand = tmp_path / "h.mmap"
    write_by_hand(by_hand, x.shape, lambda a, b: x[a:b].numpy(), y.numpy(), {"tag": [1, 2]})
    assert by_hand.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("damage", ["truncate", "extend", "magic", "header"])
def test_damaged_files_are_rejected(tmp_path, damage):
    path = tmp_path / "c.mmap"
    write_mapped(path, torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.zeros(10).long(), {})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-1]
    elif damage == "extend":
        data += b"\0"
    elif damage == "magic":
        data[:8] = b"PK\x03\x04\0\0\0\0"  # a torch.save zip
    else:
        data[16:20] = b"{{{{"
    path.write_bytes(bytes(data))
    with pytest.raises(CacheFileError):
        read_mapped(path)


@pytest.mark.parametrize(
    "header",
    [
        {"x_dtype": "|O"},  # object: np.fromfile / memmap would read pointers
        {"y_dtype": "|O"},
        {"x_shape": [-4, 2]},
        {"x_shape": [2.5, 2]},
        {"x_shape": "10"},
    ],
)
def test_a_crafted_header_is_rejected_before_any_mapping(tmp_path, header):
    """The header is data from a file: a complete, well-sized file whose header names an
    object dtype or a bad shape is refused."""
    good = {"format": 2, "x_shape": [2, 2], "x_dtype": "|u1", "y_dtype": "<i8", "meta": {}}
    head = json.dumps({**good, **header}, sort_keys=True).encode()
    path = tmp_path / "c.mmap"
    path.write_bytes(b"GMLABMM\0" + struct.pack("<Q", len(head)) + head + b"\0" * 8192)
    with pytest.raises(CacheFileError):
        read_mapped(path)


def test_gather_rows_in_ascending_order_returns_the_rows_asked_for():
    x = torch.randn(50, 3, 2)
    rows = torch.tensor([7, 3, 49, 3, 0, 21, 7])  # repeats, as DDP's padding has
    for ascending in (False, True):
        assert torch.equal(gather_rows(x, rows, ascending), x[rows])


def test_carved_splits_are_index_arrays_into_the_mapping(mnist_root, files):
    root, written = mnist_root
    mapped = MNISTDataModule(root=str(root), val_size=50, batch_size=32)
    in_memory = MNISTDataModule(root=str(root), val_size=50, batch_size=32, cache=False)
    for dm in (mapped, in_memory):
        dm.setup()
    train, val, test = (mapped.split_data(s) for s in ("train", "val", "test"))
    cache = root / "MNIST" / "raw" / "gmlab_cache_mnist_train.mmap"
    maps = Path("/proc/self/maps").read_text()
    assert str(cache) in maps and train.mapped and not in_memory.split_data("train").mapped
    assert train.x.data_ptr() == val.x.data_ptr()  # one mapping, two index arrays
    assert train.index is not None and test.index is None
    assert torch.equal(test.x, mapped.tensors("test")[0])  # a whole file: no copy
    assert test.x.data_ptr() == mapped.tensors("test")[0].data_ptr()
    rows = np.sort(np.concatenate([train.index.numpy(), val.index.numpy()]))
    assert np.array_equal(rows, np.arange(300))
    assert np.array_equal(mapped.tensors("val")[0].numpy(), written["train"][0][val.index])
    for epoch in (0, 1):  # shuffled batches from the mapping equal the in-memory ones
        loaders = [dm.train_dataloader() for dm in (mapped, in_memory)]
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        for (xa, ya), (xb, yb) in zip(*loaders, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
            idx = files.image_index(xa[:, 0])
            assert np.array_equal(ya.numpy(), written["train"][1][idx])


def test_old_torch_save_cache_is_converted_once(mnist_root, monkeypatch, caplog):
    root, written = mnist_root
    raw = root / "MNIST" / "raw"
    MNISTDataModule(root=str(root)).setup()
    legacy = raw / "gmlab_cache_mnist_test.pt"
    names = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    sources = {name: (raw / name).stat().st_size for name in names}
    x, y = torch.from_numpy(written["test"][0]), torch.from_numpy(written["test"][1])
    torch.save({"format": 1, "x": x, "y": y, "sources": sources}, legacy)
    (raw / "gmlab_cache_mnist_test.mmap").unlink()

    def no_reading(self, split):
        raise AssertionError("raw files read although an old-format cache is there")

    monkeypatch.setattr(MNISTDataModule, "read_split", no_reading)
    with caplog.at_level(logging.INFO):
        dm = MNISTDataModule(root=str(root))
        dm.setup()
    assert "converting the old-format cache" in caplog.text
    assert np.array_equal(dm.tensors("test")[0].numpy(), written["test"][0])
    assert not legacy.exists() and (raw / "gmlab_cache_mnist_test.mmap").is_file()


PASS_SCRIPT = """
import sys
import torch
from gmlab.data import MNISTDataModule

torch.set_num_threads(1)


def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}


before = status()
dm = MNISTDataModule(root=sys.argv[1], val_size=0.1, batch_size=1024, shape=[1, 28, 28])
dm.setup()
peak_anon, peak_file, total, n = 0, 0, 0, 0
for loader in (dm.train_dataloader(), dm.val_dataloader()):
    for x, y in loader:  # an EM-style pass: statistics of every batch
        total += int(x.flatten(1).sum(1, dtype=torch.int64).sum()) + int(y.sum())
        n += len(x)
        now = status()
        peak_anon = max(peak_anon, now["RssAnon"] - before["RssAnon"])
        peak_file = max(peak_file, now["RssFile"] - before["RssFile"])
print(peak_anon, peak_file, total, n)
"""


@pytest.mark.slow
def test_a_pass_over_a_large_cache_keeps_anonymous_memory_small(tmp_path):
    """400 MB of images streamed through the DataModule's carved train and val splits: the
    process's anonymous memory grows by far less than the file (the pages are the file's)."""
    n, m = 510_000, 1_000
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    sources = {name: size(n) for name, size in MNIST_FILES.items()}  # raw files deleted

    def pattern(start: int, stop: int) -> np.ndarray:  # image i: every pixel i % 251
        i = (np.arange(start, stop) % 251).astype(np.uint8)
        return np.broadcast_to(i[:, None, None, None], (stop - start, 1, 28, 28))

    labels = np.arange(n, dtype=np.int64) % 10
    write_by_hand(
        raw / "gmlab_cache_mnist_train.mmap",
        (n, 1, 28, 28),
        pattern,
        labels,
        {"format": 1, "sources": sources},
    )
    test_sources = {"t10k-images-idx3-ubyte": 16 + 784 * m, "t10k-labels-idx1-ubyte": 8 + m}
    write_mapped(
        raw / "gmlab_cache_mnist_test.mmap",
        torch.from_numpy(pattern(0, m).copy()),
        torch.from_numpy(labels[:m]),
        {"format": 1, "sources": test_sources},
    )
    size = (raw / "gmlab_cache_mnist_train.mmap").stat().st_size
    script = tmp_path / "pass.py"
    script.write_text(textwrap.dedent(PASS_SCRIPT))
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, check=True
    )
    peak_anon, peak_file, total, seen = map(int, out.stdout.split())
    # train and val together hold every image once
    expected = 784 * int((np.arange(n) % 251).sum()) + int(labels.sum())
    assert seen == n and total == expected
    grew = f"anonymous memory grew by {peak_anon / 2**20:.0f} MiB, mapped file pages by "
    grew += f"{peak_file / 2**20:.0f} MiB, for a {size / 2**20:.0f} MiB file"
    assert peak_anon < size / 4, grew  # index arrays, labels, a batch, the allocator's slack
    assert peak_file > size / 4, grew  # the pass did read the file through the mapping
