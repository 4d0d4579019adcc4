# gmlab: every target sets up .venv itself on a fresh clone.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.gmlab-installed
ARGS   ?=

.PHONY: install train test test-fast bench lint format tensorboard clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,sweeps,loggers]"
	touch $(STAMP)

install: $(STAMP)

## train: the default experiment (MFA on scikit-learn's bundled 8x8 digits, CPU, ~20 s)
train: $(STAMP)
	$(VENV)/bin/gmlab-train $(ARGS)

## test: the whole suite, as CI runs it (CPU only, no network, no ../shared), in JOBS
## pytest-xdist workers (a test file stays on one worker); prints the 15 slowest tests.
## JOBS=0: one process, no workers
JOBS   ?= 2
test: $(STAMP)
	$(VENV)/bin/pytest -q -n $(JOBS) --dist loadfile --durations=15 $(ARGS)

## test-fast: the unit tests, for the edit loop: the suite without the tests marked slow, cli
## (console scripts in subprocesses) or integration (tests/conftest.py)
test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -n $(JOBS) --dist loadfile -m "not slow and not cli and not integration" --durations=5 $(ARGS)

## bench: speed and memory ratios, printed side by side
bench: $(STAMP)
	$(PY) -m benchmarks $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks notebooks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks notebooks scripts

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks notebooks scripts
	$(VENV)/bin/ruff check --fix src tests benchmarks notebooks scripts

## tensorboard: the runs under outputs/ at http://127.0.0.1:6006; another interface only when
## asked (make tensorboard HOST=0.0.0.0), for a remote machine see docs/sweeps.md (ssh -L)
HOST   ?= 127.0.0.1
PORT   ?= 6006
tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir outputs --host $(HOST) --port $(PORT)

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
