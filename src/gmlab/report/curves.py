"""Learning curves: a run's scalars from its TensorBoard event files (TensorBoard's own
reader), or its CSV log (`metrics.csv`) when it has no event file with that tag; one PNG
per metric with a line per group (mean over its runs at each step) and a band of ± one
standard deviation where two or more runs logged that step."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from gmlab.report.grouping import Group
from gmlab.report.records import Run

Series = list[tuple[int, float]]


def _files(run: Run, match) -> list[Path]:
    found = []
    for here, _, files in os.walk(run.path):
        found += [Path(here) / f for f in files if match(f)]
    return sorted(found)


def tensorboard_scalars(run: Run) -> dict[str, Series]:
    """{tag: [(step, value)]} from every event file below the run folder."""
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    series: dict[str, dict[int, float]] = {}
    dirs = sorted({f.parent for f in _files(run, lambda f: f.startswith("events.out.tfevents"))})
    for folder in dirs:
        acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
        try:
            acc.Reload()
        except Exception:  # noqa: BLE001 - a truncated event file of a killed run
            continue
        for tag in acc.Tags().get("scalars", []):
            for event in acc.Scalars(tag):
                series.setdefault(tag, {})[int(event.step)] = float(event.value)
    return {tag: sorted(points.items()) for tag, points in series.items()}


def csv_scalars(run: Run) -> dict[str, Series]:
    """{column: [(step, value)]} from the run's CSV logs (Lightning's CSVLogger layout)."""
    series: dict[str, dict[int, float]] = {}
    for file in _files(run, lambda f: f == "metrics.csv"):
        try:
            with open(file, newline="") as handle:
                for line in csv.DictReader(handle):
                    step = line.pop("step", None)
                    if not step:
                        continue
                    for tag, value in line.items():
                        if tag != "epoch" and value not in ("", None):
                            series.setdefault(tag, {})[int(float(step))] = float(value)
        except (OSError, ValueError, OverflowError, csv.Error):
            continue
    return {tag: sorted(points.items()) for tag, points in series.items()}


def run_scalars(run: Run, tags: list[str]) -> dict[str, Series]:
    """The wanted tags of one run, each from TensorBoard when it has it, else from CSV."""
    found = tensorboard_scalars(run)
    if any(tag not in found for tag in tags):
        for tag, points in csv_scalars(run).items():
            found.setdefault(tag, points)
    return {tag: found[tag] for tag in tags if tag in found}


def band(series: list[Series]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, std) over runs at each step any run logged; std is NaN where fewer
    than two runs have the step."""
    by_step: dict[int, list[float]] = {}
    for points in series:
        for step, value in points:
            if math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    steps = np.array(sorted(by_step), dtype=float)
    mean = np.array([np.mean(by_step[s]) for s in sorted(by_step)])
    std = np.array(
        [np.std(v, ddof=1) if len(v) > 1 else np.nan for v in (by_step[s] for s in sorted(by_step))]
    )
    return steps, mean, std


def plot_curves(groups: list[Group], tags: list[str], out: Path) -> list[Path]:
    """One PNG per tag that any run logged: `out/curve_<tag>.png`. Returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = {
        id(r): run_scalars(r, tags) for g in groups for r in g.runs if r.status != "unreadable"
    }
    written = []
    for tag in tags:
        lines = []
        for group in groups:
            series = [scalars[id(r)][tag] for r in group.runs if tag in scalars.get(id(r), {})]
            if series:
                lines.append((group, len(series), band(series)))
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for group, n, (steps, mean, std) in lines:
            name = " ".join(p for p in (group.model, group.data, group.label) if p)[:70]
            (line,) = ax.plot(steps, mean, lw=1.5, label=f"{name} (n={n})")
            if np.isfinite(std).any():
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.25)
        ax.set_xlabel("step")
        ax.set_ylabel(tag)
        ax.set_title(f"{tag}: mean ± std over runs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        file = out / f"curve_{tag.replace('/', '_')}.png"
        fig.savefig(file, dpi=110)
        plt.close(fig)
        written.append(file)
    return written
