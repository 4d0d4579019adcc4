"""The MNIST leaderboard: every density family on dequantized MNIST, CPU-sized, in test
bits/dim on the shared convention, gathered into one table by gmlab-report.

usage: GMLAB_DATA=/path/with/MNIST python scripts/leaderboard.py [--out DIR] [--only a,b]
           [--max-seeds N] [OVERRIDE ...] [FAMILY:OVERRIDE ...]
       LEADERBOARD_SMOKE=1 GMLAB_DATA=... python scripts/leaderboard.py   # pipeline check only

Each family is a multirun `gmlab-train -m experiment=<name>_mnist_board seed=...` into
<out>/<name>: a failed job is recorded and the others go on, and running the same command
again skips the finished jobs and resumes the others from their own last.ckpt. The VQ-VAE's
stage 2 (vqvae_pixelcnn_mnist_board) runs per seed on the stage-1 checkpoint of that seed; when
stage 1 of a seed failed, its stage 2 is recorded as skipped. The feature network of the
sample-quality scores is a board job too (`experiment=features_mnist` into <out>/features),
and every finished job is then evaluated with `gmlab-eval ... sample_quality=mnist` into
<out>/sample_quality/<name>/<job> (skipped when done). Then `gmlab-report <out>` writes
<out>/report/report.md, report.csv and the val/bpd curves: test bpd beside FD, precision,
recall, coverage and NDB/K, and bpd_fd.png (test bpd against FD, a point per family).
Exit status 1 when a run failed.
Trailing OVERRIDEs go to every run, e.g. `data.cache_dir=/tmp/cache` when the data folder
is read-only (keys that gmlab-report ignores, or the groups split); FAMILY:OVERRIDE goes to
the training runs of that family only (or of the feature network: `features:`), e.g.
`realnvp:model.amp=none` where bf16 is emulated, and shows in its report row. LEADERBOARD_SMOKE=1
cuts every run to a few batches (`debug=limit`, 2 seeds, IWAE k=2) into
outputs/leaderboard_smoke: it checks the commands, not the models.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# (preset suffix, seeds): three seeds where a run costs under 10 CPU minutes, else one
BOARD = (
    ("gaussian", 3),
    ("mfa", 3),
    ("mppca", 3),
    ("vae", 3),
    ("vae_mog", 3),
    ("vae_made", 3),
    ("vqvae", 3),
    ("vqvae_pixelcnn", 1),
    ("realnvp", 1),
)
QUIET = ["~callbacks.progress_bar", "~callbacks.model_summary"]  # runs log to files
EVAL_QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
# the eval step's sample-quality options (a smoke run: fewer samples, a few test batches)
SAMPLE_QUALITY = ["sample_quality=mnist"]
SMOKE_EVAL = ["sample_quality.num_samples=1000", "+trainer.limit_test_batches=2"]
SCORES = ["fd", "precision", "recall", "coverage", "ndb_over_k"]
NO_SAMPLES = {"vqvae"}  # stage 1 decodes uniform codes: its samples are stage 2's job
SMOKE = {
    "*": ["debug=limit"],
    "vae": ["model.eval.iwae_k=2"],
    "vae_mog": ["model.eval.iwae_k=2"],
    "vae_made": ["model.eval.iwae_k=2"],
}


def scoped(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(the overrides of every run, {family: its own}): `FAMILY:OVERRIDE` items, where FAMILY
    is a board family or `features`, belong to that family only (a Hydra key has no colon)."""
    families = {name for name, _ in BOARD} | {"features"}
    common, own = [], {}
    for item in overrides:
        name, colon, override = item.partition(":")
        if colon and name in families:
            own.setdefault(name, []).append(override)
        else:
            common.append(item)
    return common, own


def train(args: list[str]) -> int:
    """`gmlab-train args...` in this interpreter's environment; its exit status."""
    cmd = [sys.executable, "-m", "gmlab.train", *args]
    print("+ gmlab-train " + " ".join(args), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def evaluate(args: list[str]) -> int:
    """`gmlab-eval args...` in this interpreter's environment; its exit status."""
    print("+ gmlab-eval " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "gmlab.eval", *args], cwd=ROOT).returncode


def features_run(out: Path, more: list[str]) -> Path | None:
    """The feature network's run folder (trained here once, seed 1), None if it failed."""
    sweep = out / "features"
    if finished_job(sweep, 1) is None:
        train(["-m", "experiment=features_mnist", "seed=1", *more, f"hydra.sweep.dir={sweep}"])
    return finished_job(sweep, 1)


def sample_quality_step(
    out: Path, name: str, features: Path, smoke: bool, data: list[str] = ()
) -> int:
    """`gmlab-eval ... sample_quality=mnist` of every finished job of family `name` that has
    no finished evaluation yet; 1 if one failed. `data`: the `data.*` overrides of the
    training runs (gmlab-eval takes data locations from the command line, never from a
    checkpoint)."""
    failed = 0
    for job in sorted(p for p in (out / name).glob("*") if (p / "run.json").is_file()):
        if json.loads((job / "run.json").read_text()).get("status") != "finished":
            continue
        ckpt = stage1_checkpoint(job)
        target = out / "sample_quality" / name / job.name
        if ckpt is None or (target / "metrics.json").is_file():
            continue
        args = [f"ckpt_path={ckpt}", *SAMPLE_QUALITY, f"sample_quality.features_ckpt={features}"]
        args += [*EVAL_QUIET, *(SMOKE_EVAL if smoke else []), *data, f"hydra.run.dir={target}"]
        failed |= evaluate(args) != 0
    return failed


def extra(name: str, smoke: bool) -> list[str]:
    return [*QUIET, *SMOKE["*"], *SMOKE.get(name, [])] if smoke else QUIET


def seeds_of(count: int, smoke: bool, most: int | None = None) -> list[int]:
    """Seeds 1..count, at most `most` (and 2 in a smoke run)."""
    count = min(count, 2) if smoke else count
    return list(range(1, min(count, most or count) + 1))


def finished_job(sweep: Path, seed: int) -> Path | None:
    """The folder of the finished job with `seed=<seed>` in a sweep dir, or None."""
    for folder in sorted(p for p in sweep.glob("*") if p.is_dir()):
        try:
            record = json.loads((folder / "run.json").read_text())
        except (OSError, ValueError):
            continue
        if record.get("status") == "finished" and f"seed={seed}" in record.get("overrides", []):
            return folder
    return None


def stage1_checkpoint(folder: Path | None) -> Path | None:
    if folder is None:
        return None
    best = sorted((folder / "checkpoints").glob("best-*.ckpt"))
    last = folder / "checkpoints" / "last.ckpt"
    return best[-1] if best else (last if last.is_file() else None)


def record_skipped(sweep: Path, seed: int, overrides: list[str], why: str) -> None:
    """A stage-2 job folder with run.json status `skipped` and the config the job would have
    run with (Hydra's .hydra/ files), so that gmlab-report shows it in its group."""
    folder = sweep / f"skipped-seed{seed}"
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    composed = subprocess.run(
        [sys.executable, "-m", "gmlab.train", *overrides, "--cfg", "all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if composed.returncode == 0:
        config = yaml.safe_load(composed.stdout)
        hydra = {"hydra": config.pop("hydra")}
        (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    record = {"schema": 1, "task": "train", "status": "skipped", "overrides": overrides}
    record["error"] = {"type": "Skipped", "message": why, "traceback": ""}
    (folder / "run.json").write_text(json.dumps(record, indent=2))
    print(f"skipped: {folder} ({why})", flush=True)


def run_vq_stage2(out: Path, seeds: list[int], more: list[str]) -> int:
    sweep, failed = out / "vqvae_pixelcnn", 0
    for seed in seeds:
        ckpt = stage1_checkpoint(finished_job(out / "vqvae", seed))
        overrides = ["experiment=vqvae_pixelcnn_mnist_board", f"seed={seed}", *more]
        if ckpt is None:
            why = f"stage 1 (experiment=vqvae_mnist_board seed={seed}) did not finish"
            record_skipped(sweep, seed, [*overrides, "model.vqvae_ckpt=null"], why)
            continue
        shutil.rmtree(sweep / f"skipped-seed{seed}", ignore_errors=True)  # an earlier skip
        args = ["-m", *overrides, f"model.vqvae_ckpt={ckpt}", f"hydra.sweep.dir={sweep}"]
        failed |= train(args) != 0
    return failed


def plot_bpd_against_fd(report_csv: Path, png: Path) -> bool:
    """One point per report row that has both a test bpd and an FD, labelled by its preset
    (likelihood on x, sample quality on y: the two axes Theis et al. 2016 show can
    disagree); False when no row has both."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for row in csv.DictReader(report_csv.open()):
        bpd, fd = row.get("test/bpd mean"), row.get("sample_quality/fd mean")
        if bpd and fd:
            preset = re.search(r"experiment=(\S+)", row["overrides"])
            label = preset.group(1).removesuffix("_mnist_board") if preset else row["model"]
            points.append((float(bpd), float(fd), label))
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for bpd, fd, label in points:
        ax.scatter(bpd, fd, color="tab:blue")
        ax.annotate(label, (bpd, fd), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("test bits/dim (lower is better)")
    ax.set_ylabel("Fréchet distance on classifier features (lower is better)")
    ax.set_yscale("log")
    ax.set_title("MNIST: likelihood against sample quality")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return True


def main() -> int:
    smoke = os.environ.get("LEADERBOARD_SMOKE", "") not in ("", "0")
    default_out = ROOT / "outputs" / ("leaderboard_smoke" if smoke else "leaderboard")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--only", help="comma-separated families, e.g. gaussian,mfa")
    parser.add_argument(
        "--max-seeds",
        type=int,
        help="run seeds 1..N only (a later run without it adds the others, skipping these)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to every run")
    args = parser.parse_intermixed_args()  # overrides before or after the options
    if not os.environ.get("GMLAB_DATA"):
        print("error: set GMLAB_DATA to the folder holding MNIST/raw/", file=sys.stderr)
        return 1
    only = set(args.only.split(",")) if args.only else None
    common, own = scoped(args.overrides)
    features = features_run(
        args.out, [*extra("features", smoke), *common, *own.get("features", [])]
    )
    failed = int(features is None)
    for name, count in BOARD:
        if only and name not in only:
            continue
        seeds = seeds_of(count, smoke, args.max_seeds)
        more = [*extra(name, smoke), *common, *own.get(name, [])]
        if name == "vqvae_pixelcnn":
            failed |= run_vq_stage2(args.out, seeds, more)
            continue
        sweep = args.out / name
        seed_list = "seed=" + ",".join(map(str, seeds))
        cmd = ["-m", f"experiment={name}_mnist_board", seed_list, *more]
        failed |= train([*cmd, f"hydra.sweep.dir={sweep}"]) != 0
    for name, _ in BOARD:
        if features is not None and name not in NO_SAMPLES and not (only and name not in only):
            # gmlab-eval's data node holds only `root`: other keys are added with `+`
            data = [o.lstrip("+") for o in common if o.lstrip("+").startswith("data.")]
            data = [o if o.startswith("data.root=") else f"+{o}" for o in data]
            failed |= sample_quality_step(args.out, name, features, smoke, data)
    columns = ",".join(["test/bpd", *(f"sample_quality/{s}" for s in SCORES)])
    report = [str(args.out), "--metrics", columns, "--sort", "test/bpd", "--curves", "val/bpd"]
    subprocess.run([sys.executable, "-m", "gmlab.report.cli", *report], cwd=ROOT, check=False)
    report_csv = args.out / "report" / "report.csv"
    if report_csv.is_file() and plot_bpd_against_fd(report_csv, args.out / "report" / "bpd_fd.png"):
        print(f"wrote {args.out / 'report' / 'bpd_fd.png'}", flush=True)
    if smoke:
        print("LEADERBOARD_SMOKE: a few batches per run; these numbers are not results.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
