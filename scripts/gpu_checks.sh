#!/usr/bin/env bash
# Every GPU check and GPU figure of docs/ (speed.md and the family pages) in one go, for a GPU machine whose time is
# short (about 10 minutes with MINUTES=3):
#   1. the GPU rows of the benchmarks (`python -m benchmarks --gpu`) on a quiet GPU, with
#      the torch.compile rows (GMLAB_BENCH_COMPILE=1: RealNVP under reduce-overhead);
#   2. GPU training runs of the presets, side by side on the one GPU, each stopped after
#      MINUTES by trainer.max_time (or at its own epoch count) and then tested:
#      realnvp_mnist (batch 256; with and without batch norm in the s/t nets), vae_mnist / vae_mog_mnist and the *_wide presets (test NLL
#      = IWAE bound, k = 5000), gmm_classifier_mnist under bf16-mixed precision, mfa_mnist,
#      and a two-seed mfa_digits multirun through the local_gpus launcher;
#   3. meanwhile the suite's GPU tests (tests/test_gpu.py and every test parametrized over
#      "cuda"), then the whole suite with the GPU visible.
# Writes OUT/{bench,tests,suite}.log, OUT/summary.txt and OUT/runs.tgz (logs, metrics.json,
# and PNG grids of every run; no checkpoints or TensorBoard events, which outgrow a
# 16 MB file limit).
#
# usage: scripts/gpu_checks.sh DATA_ROOT OUT [MINUTES]   (DATA_ROOT holds MNIST/raw)
#
# On a machine whose Python has torch, Lightning and the scientific stack but where gmlab
# cannot be pip-installed (the workplace's lent GPU machines), the 2026-11-28 run used:
#   here:  mkdir -p .gpu/site/hydra_plugins .gpu/mnist  (.gpu/ git-excluded); copy hydra,
#          omegaconf, antlr4, submitit and hydra_plugins/hydra_submitit_launcher from
#          .venv/lib/python3.*/site-packages into .gpu/site; gzip ../shared/data/MNIST/raw/*
#          into .gpu/mnist
#   there: export PYTHONPATH=$PWD/.gpu/site:$PWD/src:$PWD GMLAB_BENCH_DATA=/tmp/data;
#          gunzip the files into /tmp/data/MNIST/raw; scripts/gpu_checks.sh /tmp/data $OUT 3
# (the CLI tests then fail for want of the gmlab-train console script; nothing else should)
set -u
DATA=$1
OUT=$2
MINUTES=${3:-3}
PY=${PYTHON:-python3}
RUNS=/tmp/gmlab_gpu_runs
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1

GMLAB_BENCH_COMPILE=1 timeout 330 $PY -m benchmarks --gpu >"$OUT/bench.log" 2>&1

# decode MNIST into the cache once, before the runs read it side by side
$PY -c "from gmlab.data import MNISTDataModule as M; M(root='$DATA').setup()"

run() {  # run NAME OVERRIDES...: one preset on the GPU, in the background
  local name=$1
  shift
  OMP_NUM_THREADS=2 timeout $((MINUTES * 60 + 240)) $PY -m gmlab.train "$@" trainer=gpu \
    data.root="$DATA" trainer.enable_progress_bar=false \
    trainer.max_time="00:00:$(printf %02d "$MINUTES"):00" hydra.run.dir="$RUNS/$name" \
    >"$RUNS/$name.log" 2>&1 &
}
run realnvp_mnist experiment=realnvp_mnist data.batch_size=256 trainer.max_epochs=-1
run realnvp_mnist_no_net_norm experiment=realnvp_mnist data.batch_size=256 trainer.max_epochs=-1 \
  model.flow.net_norm=null
run vae_mnist experiment=vae_mnist model.eval.iwae_k=5000
run vae_mog_mnist experiment=vae_mog_mnist model.eval.iwae_k=5000
run vae_mnist_wide experiment=vae_mnist_wide
run vae_mog_mnist_wide experiment=vae_mog_mnist_wide
run gmm_classifier_mnist experiment=gmm_classifier_mnist trainer.precision=bf16-mixed
run mfa_mnist experiment=mfa_mnist
OMP_NUM_THREADS=2 timeout 300 $PY -m gmlab.train -m experiment=mfa_digits trainer=gpu \
  hydra/launcher=local_gpus seed=1,2 hydra.sweep.dir="$RUNS/multirun_local_gpus" \
  trainer.enable_progress_bar=false >"$RUNS/multirun_local_gpus.log" 2>&1 &

OMP_NUM_THREADS=2 timeout 300 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/nn tests/models \
  tests/ops tests/metrics -k "cuda or gpu" >"$OUT/tests.log" 2>&1
OMP_NUM_THREADS=2 timeout 240 $PY -m pytest -q -p no:cacheprovider -n 4 --ignore=tests/test_notebooks.py \
  >"$OUT/suite.log" 2>&1
wait

{
  for log in "$OUT/tests.log" "$OUT/suite.log"; do echo "$log: $(tail -n 1 "$log")"; done
  for metrics in $(find "$RUNS" -name metrics.json | sort); do
    echo "== ${metrics#"$RUNS"/}"
    cat "$metrics"
  done
  tail -n 3 "$RUNS"/*.log
} >"$OUT/summary.txt" 2>&1
tar czf "$OUT/runs.tgz" --exclude='*.ckpt' --exclude='events.out.*' -C "$RUNS" .
cat "$OUT/bench.log" "$OUT/summary.txt"
