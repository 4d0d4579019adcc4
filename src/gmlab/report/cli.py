"""`gmlab-report PATH [PATH ...]`: find the runs, group them, write report.md, report.csv
and learning-curve PNGs, print the table.

gmlab-report outputs/train/multiruns/<date_time>
gmlab-report outputs --metrics test/bpd --sort test/bpd --curves val/bpd
gmlab-report outputs --group-by model,data --out /tmp/report
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from gmlab.errors import ConfigError, GmlabError
from gmlab.report import curves, table
from gmlab.report.grouping import group_runs
from gmlab.report.records import Run, find_runs, read_run

# conf/ beside src/ (the same root gmlab-train composes its configs from)
DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "conf" / "report.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="gmlab-report",
        description="Gather runs into one table (report.md, report.csv) and learning curves.",
    )
    p.add_argument("paths", nargs="+", help="run folders, multirun folders or outputs/")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="report config (YAML)")
    p.add_argument("--metrics", help="comma-separated metric patterns, e.g. test/bpd,test/nll*")
    p.add_argument("--curves", help="comma-separated scalars to plot ('' for none)")
    p.add_argument("--group-by", help="comma-separated config keys, e.g. model,data")
    p.add_argument("--sort", help="a metric or model/data/wall_time; --sort=-KEY: descending")
    p.add_argument("--out", help="output folder (default: <first PATH>/report)")
    p.add_argument("--stale-after", type=float, help="minutes without a write: killed")
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> dict:
    """conf/report.yaml (or --config) with the flags given on the command line."""
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(args.config))
    except Exception as exc:  # noqa: BLE001 - any unreadable config file
        raise ConfigError(f"cannot read report config {args.config}: {exc}") from exc
    split = lambda text: [s.strip() for s in text.split(",") if s.strip()]  # noqa: E731
    for flag, key in (("metrics", "metrics"), ("curves", "curves"), ("group_by", "group_by")):
        if getattr(args, flag) is not None:
            cfg[key] = split(getattr(args, flag))
    for flag, key in (("sort", "sort"), ("out", "out"), ("stale_after", "stale_after_min")):
        if getattr(args, flag) is not None:
            cfg[key] = getattr(args, flag)
    return cfg


def report(paths: list[str], cfg: dict) -> tuple[list[table.Row], list[Run], Path, list[str]]:
    """Read, group, summarize and write; returns (rows, runs, output folder, metric names)."""
    stale_s = float(cfg.get("stale_after_min") or 30) * 60
    runs = [read_run(path, stale_s) for path in find_runs(paths)]
    groups = group_runs(
        runs, list(cfg.get("ignore") or []), cfg.get("group_by"), lambda p: read_run(p, stale_s)
    )
    metrics = table.metric_names(groups, list(cfg.get("metrics") or ["test/*"]))
    rows = table.sort_rows(table.summarize(groups, metrics), cfg.get("sort"), metrics)
    first = Path(paths[0])
    out = (
        Path(cfg["out"])
        if cfg.get("out")
        else (first if first.is_dir() else first.parent) / "report"
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        pictures = curves.plot_curves([r.group for r in rows], list(cfg.get("curves") or []), out)
        (out / "report.csv").write_text(table.to_csv(rows, metrics))
        (out / "report.md").write_text(markdown_report(paths, rows, runs, metrics, pictures, out))
    except OSError as exc:
        raise GmlabError(
            f"cannot write the report into {out} ({exc.strerror or exc}): give a writable "
            "folder with --out"
        ) from exc
    return rows, runs, out, metrics


def markdown_report(paths, rows, runs, metrics, pictures, out: Path) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    counts = table.status_text(_status_counts(runs))
    parts = [
        "# gmlab report",
        "",
        f"`gmlab-report {' '.join(map(str, paths))}` on {when}: {len(runs)} runs "
        f"({counts}) in {len(rows)} groups.",
        "",
        "Each metric: mean ± sample std (number of finished runs) and what kind of number "
        "it is: `exact` is a log-likelihood, a `... bound` only bounds it, `kind ?`: the run "
        "did not record it.",
        "",
        table.markdown(rows, metrics),
    ]
    if pictures:
        parts += ["", "## Learning curves", ""]
        parts += [f"![{p.stem}]({os.path.relpath(p, out)})" for p in pictures]
    parts += ["", "## Runs", "", runs_table(rows, runs)]
    return "\n".join(parts) + "\n"


def _status_counts(runs: list[Run]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    return counts


def runs_table(rows: list[table.Row], runs: list[Run]) -> str:
    """Every run with its group number (row of the table), status, seed, wall time, note."""
    number = {id(run): i for i, row in enumerate(rows, 1) for run in row.group.runs}
    root = Path(os.path.commonpath([str(r.path) for r in runs]))
    lines = [
        "| row | run | task | status | seed | wall time | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        wall = run.wall_time_s
        cells = [
            number.get(id(run), "–"),
            os.path.relpath(run.path, root.parent),
            run.task,
            run.status,
            run.config.get("seed", "–"),
            table.wall_text(wall if wall is not None else float("nan")),
            run.problem,
        ]
        text = (" ".join(str(c).split()).replace("|", "\\|") for c in cells)
        lines.append("| " + " | ".join(text) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from gmlab.utils.cli import user_errors

    with user_errors():
        args = parse_args(argv)
        rows, runs, out, metrics = report(args.paths, settings(args))
        print(table.text(rows, metrics))
        for run in runs:
            if run.status not in ("finished", "running", "skipped"):
                print(f"{run.status}: {run.path}: {run.problem}", file=sys.stderr)
        print(f"\n{len(runs)} runs in {len(rows)} groups; wrote {out}/report.md, report.csv")


if __name__ == "__main__":
    main()
