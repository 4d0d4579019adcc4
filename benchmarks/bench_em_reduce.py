"""EM sufficient statistics across DDP ranks: gmlab's one all-reduce of one flat float64
vector (`SufficientStats.flat` -> `all_reduce(sum)` -> `load_flat`, what `MFAModel` does at
the end of a pass) against torchmetrics `Metric` states with `dist_reduce_fx="sum"` (what
PyCave does: each state is all-gathered from every rank, then summed).

Two CPU processes over gloo, the statistics of `experiment=mfa_mnist_robust` (K=200, l=6,
d=784: 1.25 M float64 values); median seconds of one reduction, the ratio, and whether
both give the same sums. gmlab's timing also re-loads the rank's own statistics before each
all-reduce (so that the sums do not grow), work the real pass does not do.

    python -m benchmarks em_reduce
"""

from __future__ import annotations

import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

K, D, L = 200, 784, 6
REPEATS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_stats(rank: int):
    from gmlab.distributions.mfa import SufficientStats

    gen = torch.Generator().manual_seed(rank)
    stats = SufficientStats.zeros(K, D, L, isotropic=False)
    for name in SufficientStats._SUMMED:
        value = getattr(stats, name)
        setattr(stats, name, torch.rand(value.shape, generator=gen, dtype=torch.float64))
    return stats


def metric_class():
    from torchmetrics import Metric

    class EMStatistics(Metric):
        """The summed EM statistics as torchmetrics states."""

        full_state_update = False

        def __init__(self, shapes: dict[str, tuple[int, ...]]):
            super().__init__()
            for name, shape in shapes.items():
                zeros = torch.zeros(shape, dtype=torch.float64)
                self.add_state(name, default=zeros, dist_reduce_fx="sum")

        def update(self, **values: torch.Tensor) -> None:
            for name, value in values.items():
                setattr(self, name, getattr(self, name) + value)

        def compute(self) -> dict[str, torch.Tensor]:
            return {name: getattr(self, name) for name in self._defaults}

    return EMStatistics


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from gmlab.distributions.mfa import SufficientStats

    stats = rank_stats(rank)
    names = SufficientStats._SUMMED
    local = {n: getattr(stats, n).clone() for n in names}

    def flat_all_reduce() -> None:
        vec = stats.flat()
        dist.all_reduce(vec)
        stats.load_flat(vec)

    metric = metric_class()({n: tuple(v.shape) for n, v in local.items()})
    metric.update(**local)

    def torchmetrics_sync() -> None:
        metric.sync()
        metric.unsync()

    ours = timed(
        lambda: (
            stats.load_flat(torch.cat([local[n].reshape(-1) for n in names])),
            flat_all_reduce(),
        ),
        REPEATS,
    )
    theirs = timed(torchmetrics_sync, REPEATS)
    stats.load_flat(torch.cat([local[n].reshape(-1) for n in names]))
    flat_all_reduce()
    metric.sync()
    same = all(torch.allclose(getattr(stats, n), getattr(metric, n), rtol=1e-12) for n in names)
    metric.unsync()
    if rank == 0:
        results.put((ours, theirs, same, int(stats.flat().numel())))
    dist.destroy_process_group()


def main() -> None:
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(worker, args=(free_port(), results), nprocs=2, start_method="spawn")
    ours, theirs, same, size = results.get()
    print(
        f"EM statistics across 2 gloo ranks ({size / 1e6:.2f} M float64, K={K}, l={L}, d={D}), "
        f"median of {REPEATS}: one flat all-reduce {ours * 1e3:.1f} ms, torchmetrics states "
        f"{theirs * 1e3:.1f} ms; torchmetrics / flat = {theirs / ours:.2f}; same sums: "
        f"{'yes' if same else 'NO'}"
    )


def gpu() -> None:
    """No GPU rows: the reduction is timed over gloo on the CPU."""
