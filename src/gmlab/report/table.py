"""One row per group: each metric as mean ± std (n) over the finished runs, with its kind
(exact, or which bound), the mean wall time and the runs' statuses."""

from __future__ import annotations

import csv
import fnmatch
import io
import math
from dataclasses import dataclass, field

import numpy as np

from gmlab.report.grouping import Group
from gmlab.report.names import unknown_name

STATUS_ORDER = (
    "finished",
    "no metrics",
    "running",
    "stale",
    "interrupted",
    "failed",
    "skipped",
    "unreadable",
)
SORT_COLUMNS = ("model", "data", "overrides", "wall_time", "status")
KIND_NAMES = {"elbo": "ELBO bound", "iwae_bound": "IWAE bound", "vq_bound": "VQ bound"}


@dataclass
class Cell:
    """One metric of one group: the finite values of its finished runs."""

    values: list[float] = field(default_factory=list)
    nonfinite: int = 0
    kinds: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof = 1); NaN below two values."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else math.nan

    @property
    def kind(self) -> str:
        return " / ".join(self.kinds) if self.kinds else "kind ?"

    def text(self) -> str:
        if not self.values:
            return "–" if not self.nonfinite else f"non-finite ({self.nonfinite})"
        value = f"{self.mean:.5g}" + (f" ± {self.std:.2g}" if self.n > 1 else "")
        extra = f", {self.nonfinite} non-finite" if self.nonfinite else ""
        return f"{value} ({self.n}{extra}) {self.kind}"


@dataclass
class Row:
    group: Group
    cells: dict[str, Cell]
    wall_time_s: float
    statuses: dict[str, int]

    @property
    def status(self) -> str:
        return status_text(self.statuses)


def status_text(counts: dict[str, int]) -> str:
    """{"finished": 2, "failed": 1} -> "2 finished, 1 failed"; statuses not in
    STATUS_ORDER (a run.json's own word) follow, by name."""
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts) - set(STATUS_ORDER))
    return ", ".join(f"{counts[s]} {s}" for s in order)


def kind_text(kind) -> str:
    """{"kind": "iwae_bound", "k": 1000, "bound": true} -> "IWAE bound k=1000"."""
    if not isinstance(kind, dict) or not isinstance(kind.get("kind"), str) or not kind["kind"]:
        return "kind ?"
    text = KIND_NAMES.get(kind["kind"], str(kind["kind"]))
    if kind.get("k") is not None:
        text += f" k={kind['k']}"
    if kind.get("bound") and "bound" not in text:
        text += " (bound)"
    if kind.get("features"):  # sample-quality scores: the feature space they were computed in
        text += f" on {kind['features']}"
    return text


def metric_names(groups: list[Group], patterns: list[str]) -> list[str]:
    """Metrics of the finished runs that match `patterns`, in pattern order, then by name.
    A pattern that matches none of them is a ConfigError (when any finished run recorded
    metrics: before that, there is nothing to choose from)."""
    present = sorted(
        {m for g in groups for r in g.runs if r.status == "finished" for m in r.metrics}
    )
    names: list[str] = []
    for pattern in patterns:
        matched = [m for m in present if fnmatch.fnmatchcase(m, pattern)]
        if present and not matched:
            raise unknown_name(
                "--metrics", pattern, "matches no metric of the finished runs", present
            )
        names += [m for m in matched if m not in names]
    return names


def summarize(groups: list[Group], metrics: list[str]) -> list[Row]:
    rows = []
    for group in groups:
        cells = {m: Cell() for m in metrics}
        statuses: dict[str, int] = {}
        walls = []
        for run in group.runs:
            statuses[run.status] = statuses.get(run.status, 0) + 1
            if run.status != "finished":
                continue
            if run.wall_time_s is not None:
                walls.append(run.wall_time_s)
            for name, cell in cells.items():
                if name not in run.metrics:
                    continue
                value = run.metrics[name]
                if math.isfinite(value):
                    cell.values.append(value)
                else:
                    cell.nonfinite += 1
                kind = kind_text(run.metric_kinds.get(name))
                if kind not in cell.kinds:
                    cell.kinds.append(kind)
        wall = float(np.mean(walls)) if walls else math.nan
        rows.append(Row(group, cells, wall, statuses))
    return rows


def sort_rows(rows: list[Row], key: str | None, metrics: list[str]) -> list[Row]:
    """By a metric's mean (one of the table's `metrics`) or by a column (SORT_COLUMNS);
    a leading "-" sorts descending. Missing values go last either way. Another name is a
    ConfigError."""
    if not key:
        return rows
    reverse = key.startswith("-")
    name = key.lstrip("-")
    if name not in metrics and name not in SORT_COLUMNS:
        raise unknown_name(
            "--sort",
            name,
            "is not a column of the table (a metric must be in --metrics)",
            [*metrics, *SORT_COLUMNS],
        )

    def value(row: Row):
        if name in row.cells:
            return row.cells[name].mean
        if name == "wall_time":
            return row.wall_time_s
        columns = {"model": row.group.model, "data": row.group.data, "status": row.status}
        return columns.get(name, row.group.label)

    present = [r for r in rows if not _missing(value(r))]
    missing = [r for r in rows if _missing(value(r))]
    return sorted(present, key=value, reverse=reverse) + missing


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def wall_text(seconds: float) -> str:
    if math.isnan(seconds):
        return "–"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _cells(row: Row, metrics: list[str]) -> list[str]:
    label = row.group.label or "–"
    return [
        row.group.model or "?",
        row.group.data or "?",
        f"[eval] {label}" if row.group.task == "eval" else label,
        *[row.cells[m].text() for m in metrics],
        wall_text(row.wall_time_s),
        row.status,
    ]


def header(metrics: list[str]) -> list[str]:
    return ["model", "data", "overrides", *metrics, "wall time", "status"]


def markdown(rows: list[Row], metrics: list[str]) -> str:
    lines = [header(metrics), ["---"] * len(header(metrics))]
    lines += [_cells(row, metrics) for row in rows]
    return "\n".join(
        "| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines
    )


def text(rows: list[Row], metrics: list[str]) -> str:
    lines = [header(metrics)] + [_cells(row, metrics) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def to_csv(rows: list[Row], metrics: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = ["model", "data", "task", "overrides", "runs", "status", "wall_time_s"]
    for m in metrics:
        columns += [f"{m} mean", f"{m} std", f"{m} n", f"{m} kind"]
    writer.writerow(columns)
    for row in rows:
        g = row.group
        line = [g.model, g.data, g.task, g.label, len(g.runs), row.status, _num(row.wall_time_s)]
        for m in metrics:
            cell = row.cells[m]
            line += [_num(cell.mean), _num(cell.std), cell.n, cell.kind]
        writer.writerow(line)
    return out.getvalue()


def _num(value: float) -> str:
    return "" if math.isnan(value) else repr(value)
