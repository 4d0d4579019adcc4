"""Run every benchmarks/bench_*.py (or those named: `python -m benchmarks mfa data`), with
subnormal floats flushed to zero as the entry points do.

`python -m benchmarks --gpu [names]` runs only the GPU rows (each module's `gpu()`), for a
GPU machine whose time is short."""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks.common import machine


def main(args: list[str]) -> int:
    gpu_only = "--gpu" in args
    names = [a for a in args if a != "--gpu"]
    if gpu_only and not torch.cuda.is_available():
        print("--gpu: no CUDA device is visible to torch on this machine")
        return 2
    found = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    chosen = [f"bench_{n}" if not n.startswith("bench_") else n for n in names] or found
    unknown = sorted(set(chosen) - set(found))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(found)}")
        return 2
    # as gmlab-train and gmlab-eval run (`flush_denormal: true`); before any parallel op,
    # so that every torch thread has the mode
    flushed = torch.set_flush_denormal(True)
    print(f"machine: {machine()}; subnormal floats flushed: {flushed}")
    failed = []
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            if not gpu_only:
                module.main()
            elif hasattr(module, "gpu"):
                module.gpu()
            else:
                print("(no GPU rows)")
        except Exception:  # one broken benchmark must not cost the rows of the others
            traceback.print_exc()
            failed.append(name)
        print(f"({name}: {time.perf_counter() - start:.1f} s)", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
