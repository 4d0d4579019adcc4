"""Run every benchmarks/bench_*.py (or those named: `python -m benchmarks mfa data`)."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

from benchmarks.common import machine


def main(names: list[str]) -> int:
    found = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    chosen = [f"bench_{n}" if not n.startswith("bench_") else n for n in names] or found
    unknown = sorted(set(chosen) - set(found))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(found)}")
        return 2
    print(f"machine: {machine()}")
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        importlib.import_module(f"benchmarks.{name}").main()
        print(f"({name}: {time.perf_counter() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
