"""The data path: MNIST epochs against torchvision, EM-style passes from the memory-mapped
cache against in memory (warm and cold page cache), and the data path's share of the
fastest model's training step (`vae_mnist`, goal <= 2 %).

1. One training epoch of batches (batch 128): torchvision's `DataLoader(MNIST(transform=
   ToTensor()))` (PIL image and transform per sample) against `MNISTDataModule` batches
   by indexing, with and without the `Preprocessor` (float, uniform dequantization).
2. An EM-style pass (what MFA's EM reads: every training batch of 1024, dequantized to
   floats) over the split in memory (`cache=False`), from the memory-mapped cache with a
   warm page cache, and once cold: the cache file's pages are dropped from the kernel's
   page cache with `posix_fadvise(POSIX_FADV_DONTNEED)` first (no root needed; the major
   page faults of the pass show that the pages came from disk).
3. The `vae_mnist` training step (MLP 784-400-10, batch 200) in Lightning's fit loop over
   MNIST in memory, from the mapping, and over one fixed batch (what Lightning's loop
   costs between steps with no data path at all), each handed over by a DataModule: the
   time between steps as a share of a step, the loader's `next()` inside the loop, and
   the data path's share (the time between steps minus the fixed batch's).

Figures 2 and 3 are CPU seconds of the one thread doing the work (torch runs single-
threaded there), steady on a shared machine where wall-clock times are not; medians of
repeated, interleaved runs.

Data: real MNIST under $GMLAB_DATA (`<GMLAB_DATA>/MNIST/raw/`) when set, else synthetic
MNIST-shaped IDX files in a temporary folder.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BATCH = 128
EM_BATCH = 1024
GOAL_SHARE = 0.02
clock = time.thread_time


def measure(fn, repeats: int = 5, warmup: int = 1) -> tuple[float, float]:
    """Best wall-clock and best CPU seconds (this process, all threads) of `repeats` calls.

    CPU time hardly changes when other processes share the cores; wall time does."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def synthetic_mnist(root: Path) -> None:
    """MNIST-shaped IDX files (60k/10k random 28x28 digits) in torchvision's layout."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60_000), ("t10k", 10_000)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            header = struct.pack(">I", 0x0800 + arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
            (raw / f"{prefix}-{kind}-ubyte").write_bytes(header + arr.tobytes())


def data_root(tmp: Path) -> Path:
    """$GMLAB_DATA when it holds MNIST, else synthetic files of that shape under tmp."""
    shared = Path(os.environ.get("GMLAB_DATA", "")).expanduser()
    if os.environ.get("GMLAB_DATA") and (shared / "MNIST/raw/train-images-idx3-ubyte").is_file():
        root, source = shared, f"real MNIST from $GMLAB_DATA={shared}"
    else:
        root, source = tmp / "data", "synthetic MNIST-shaped IDX files ($GMLAB_DATA unset)"
        synthetic_mnist(root)
    print(f"data: {source}")
    return root


def datamodule(root: Path, cache_dir: Path | None, batch: int, **kwargs):
    """MNIST train split in memory (cache_dir None) or memory-mapped from cache_dir."""
    from gmlab.data import MNISTDataModule

    cache = {"cache": False} if cache_dir is None else {"cache_dir": str(cache_dir)}
    dm = MNISTDataModule(root=str(root), batch_size=batch, **cache, **kwargs)
    dm.setup()
    return dm


# ------------------------------------------------------------------ 1. epochs
def torchvision_epoch(root: Path):
    from torch.utils.data import DataLoader
    from torchvision.datasets import MNIST
    from torchvision.transforms import ToTensor

    loader = DataLoader(MNIST(str(root), transform=ToTensor()), batch_size=BATCH, shuffle=True)

    def epoch() -> int:
        return sum(len(x) for x, _ in loader)

    return epoch


def gmlab_epoch(dm, preprocess: bool, dequantize: bool = True):
    from gmlab.data import Preprocessor

    pre = Preprocessor(dequantize=dequantize, scale="unit")
    loader = dm.train_dataloader()
    state = {"epoch": 0}

    def epoch() -> int:
        loader.sampler.set_epoch(state["epoch"])  # a new permutation, as in training
        state["epoch"] += 1
        n = 0
        for x, _ in loader:
            if preprocess:
                x, _ = pre(x, train=True)
            n += len(x)
        return n

    return epoch


def epochs(root: Path, cache: Path) -> None:
    dm = datamodule(root, cache, BATCH, val_size=0)
    tv = torchvision_epoch(root)
    assert tv() == gmlab_epoch(dm, False)() == 60_000
    figures = {
        "torchvision": measure(tv, repeats=2, warmup=0),
        "gmlab": measure(gmlab_epoch(dm, True)),
        "gmlab_float": measure(gmlab_epoch(dm, True, dequantize=False)),
        "gmlab_loader_only": measure(gmlab_epoch(dm, False)),
    }
    tv_wall, tv_cpu = figures["torchvision"]
    rows = [
        ("torchvision DataLoader(MNIST(transform=ToTensor()))", "torchvision"),
        ("gmlab MNISTDataModule (mapped) + Preprocessor (dequantized)", "gmlab"),
        ("gmlab + Preprocessor, bin centres (floats, as ToTensor)", "gmlab_float"),
        ("gmlab MNISTDataModule, uint8 batches only", "gmlab_loader_only"),
    ]
    print(f"1. one epoch, 60,000 images in batches of {BATCH}, {torch.get_num_threads()} threads")
    print(f"  {'':<60} {'wall s':>8} {'ratio':>7} {'CPU s':>8} {'ratio':>7}")
    for label, key in rows:
        wall, cpu = figures[key]
        print(f"  {label:<60} {wall:8.3f} {tv_wall / wall:6.1f}x {cpu:8.3f} {tv_cpu / cpu:6.1f}x")


# ------------------------------------------------------------- 2. EM passes
def drop_page_cache(path: Path) -> None:
    """Ask the kernel to drop the file's clean pages (pages mapped by a process stay)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def em_pass(dm) -> tuple[float, int, float]:
    """(thread CPU s, major page faults, wall s) of one pass: every batch, dequantized."""
    from gmlab.data import Preprocessor

    pre = Preprocessor(dequantize=True, scale="unit")
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    start, wall = clock(), time.perf_counter()
    total = 0.0
    for x, _ in dm.train_dataloader():
        y, _ = pre(x, train=True)
        total += float(y[:, 0, 0, 0].sum())  # a statistic of every batch
    cpu = clock() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt - faults
    return cpu, faults, time.perf_counter() - wall


def warm_passes(root: Path, cache: Path, rounds: int) -> tuple[dict[str, list[float]], int]:
    """Thread-CPU seconds of interleaved passes in memory and from the mapping (warm)."""
    kinds = {"in memory": None, "memory-mapped, warm": cache}
    dms = {k: datamodule(root, c, EM_BATCH) for k, c in kinds.items()}
    times: dict[str, list[float]] = {k: [] for k in dms}
    for _ in range(rounds):  # interleaved: both see the same load
        for k in dms:
            times[k].append(em_pass(dms[k])[0])
    return times, len(dms["in memory"].split_data("train"))


def em_passes(root: Path, cache: Path, rounds: int = 5) -> None:
    times, n = warm_passes(root, cache, rounds)
    print(f"2. EM-style pass over the {n:,} training images (batches of {EM_BATCH}, dequantized)")
    base = statistics.median(times["in memory"])
    for k, t in times.items():
        print(f"  {k:<40} {statistics.median(t):7.3f} s CPU   {statistics.median(t) / base:5.2f}x")
    gc.collect()  # nothing maps the file now, so the kernel may drop its pages
    path = next(cache.glob("gmlab_cache_mnist_train_*.mmap"))
    drop_page_cache(path)
    cpu, faults, wall = em_pass(datamodule(root, cache, EM_BATCH))
    print(
        f"  {'memory-mapped, cold (fadvise DONTNEED)':<40} {cpu:7.3f} s CPU   {cpu / base:5.2f}x"
        f"   {wall:.3f} s wall, {faults} major page faults (reads from disk), "
        f"file {path.stat().st_size / 2**20:.0f} MiB"
    )


# --------------------------------------------------- 3. share of a vae_mnist step
class FixedBatch:
    """One batch yielded every step: Lightning's loop with no data path at all."""

    def __init__(self, loader) -> None:
        self.batch = next(iter(loader))
        self.n = len(loader)
        self.sampler, self.batch_sampler = loader.sampler, None

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


class TimedLoader:
    """A loader's batches, with the thread-CPU seconds of each `next()` inside the fit
    loop (where the caches are cold from the step before, unlike in a tight loop)."""

    def __init__(self, loader) -> None:
        self.loader, self.seconds = loader, []
        self.sampler, self.batch_sampler = loader.sampler, None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            start = clock()
            batch = next(batches, None)
            if batch is None:
                return
            self.seconds.append(clock() - start)
            yield batch


def vae_gap(loader, steps: int) -> tuple[float, float, float]:
    """Fit vae_mnist for `steps` steps on `loader`, handed over by a LightningDataModule
    (the route of a real run): (median thread-CPU ms per step, median share of a step
    spent between steps, median share spent in the loader's `next()`)."""
    import lightning as L

    from benchmarks.bench_vae import SETTINGS, StepTimer
    from benchmarks.common import step_timing_trainer
    from gmlab.models.vae import VAE

    class ThreadTimer(StepTimer):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._start = clock()
            self._load = self._start - self._end if self._end is not None else None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            end = clock()
            if batch_idx >= self.warmup and self._load is not None:
                self.steps.append(end - self._end)
                self.loads.append(self._load)
            self._end = end

    class OneLoader(L.LightningDataModule):
        def train_dataloader(self):
            return timed

    cfg = SETTINGS["vae_mnist"]
    model = VAE(data_shape=cfg["shape"], **cfg["model"])
    timer = ThreadTimer(warmup=3)
    timed = TimedLoader(loader)
    step_timing_trainer(timer, limit_train_batches=steps + 4).fit(model, datamodule=OneLoader())
    step = statistics.median(timer.steps)
    next_s = statistics.median(timed.seconds[timer.warmup :])
    return 1e3 * step, statistics.median(timer.loads) / step, next_s / step


def vae_share(root: Path, cache: Path, steps: int = 60, rounds: int = 3) -> None:
    from lightning.pytorch.utilities import disable_possible_user_warnings

    disable_possible_user_warnings()
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    batch = 200
    dms = {
        "in memory": datamodule(root, None, batch),
        "memory-mapped": datamodule(root, cache, batch),
    }
    loaders = {k: dm.train_dataloader for k, dm in dms.items()}
    loaders["fixed batch"] = lambda: FixedBatch(dms["in memory"].train_dataloader())
    rows: dict[str, list[tuple[float, float, float]]] = {k: [] for k in loaders}
    for _ in range(rounds):  # interleaved, so that a busy spell hits every row alike
        for k, make in loaders.items():
            rows[k].append(vae_gap(make(), steps))
    step_ms = statistics.median(s for r in rows.values() for s, _, _ in r)
    floor = statistics.median(g for _, g, _ in rows["fixed batch"])
    print(
        f"3. vae_mnist training step (batch {batch}), Lightning fit loop, 1 thread: "
        f"{step_ms:.2f} ms CPU (median of {rounds} x {steps} steps)"
    )
    print(f"  {'':<16} {'between steps':>14} {'in next()':>10} {'data path':>10}")
    print(f"  {'fixed batch':<16} {100 * floor:13.2f}%  (Lightning's own loop: no data path)")
    for k in dms:
        gap = statistics.median(g for _, g, _ in rows[k])
        own = statistics.median(n for _, _, n in rows[k])
        verdict = "meets" if gap - floor <= GOAL_SHARE else "misses"
        print(
            f"  {k:<16} {100 * gap:13.2f}% {100 * own:9.2f}% {100 * (gap - floor):9.2f}%  "
            f"{verdict} the 2% goal (data path: between steps minus the fixed batch's)"
        )


def main() -> None:
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = data_root(tmp)
        cache = tmp / "cache"
        start = time.perf_counter()
        datamodule(root, cache, BATCH)
        decode_s = time.perf_counter() - start
        start = time.perf_counter()
        datamodule(root, cache, BATCH)
        print(
            f"setup: first {decode_s:.2f} s (IDX read + cache write), from the memory-mapped "
            f"cache {time.perf_counter() - start:.3f} s"
        )
        epochs(root, cache)
        torch.set_num_threads(1)
        try:
            em_passes(root, cache)
            vae_share(root, cache)
        finally:
            torch.set_num_threads(threads)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    print(f"  (load average {load:.1f} on {cores} cores while this ran)")


def gpu() -> None:
    """GPU row alone (`--gpu`): an epoch with the split and the Preprocessor on the GPU."""
    from gmlab.data import Preprocessor

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = data_root(tmp)
        dm = datamodule(root, tmp / "cache", BATCH, val_size=0)
        cpu, _ = measure(gmlab_epoch(dm, True))
        x, y = (t.cuda() for t in dm.tensors("train"))
        pre = Preprocessor(dequantize=True, scale="unit")

        def epoch() -> None:
            for i in range(0, len(x), BATCH):
                pre(x[i : i + BATCH], train=True)
            torch.cuda.synchronize()

        on_gpu, _ = measure(epoch)
    print(
        f"  gmlab + Preprocessor (float, dequantized): CPU {cpu:.4f} s/epoch, data and "
        f"Preprocessor on {torch.cuda.get_device_name()} {on_gpu:.4f} s/epoch "
        f"({cpu / on_gpu:.1f}x)"
    )


if __name__ == "__main__":
    main()
