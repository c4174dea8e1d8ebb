# Two commands set everything up: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export WANDB_MODE := offline
export RAY_USAGE_STATS_ENABLED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: train test lint format venv dev clean help docs bench

help:
	@echo "make train   set up .venv, train and evaluate the default experiment (config.yaml)"
	@echo "make test    set up .venv with dev tools and run lint + the whole test suite"
	@echo "make bench   set up .venv with Lightning/Accelerate and run the benchmark suite (docs/benchmarks.md)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall when the pinned requirements change.
$(VENV)/.runtime: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

# Airflow in its own environment (its pins conflict with MLflow's); used by the pipeline tests.
AIRFLOW_VENV ?= .venv-airflow
$(AIRFLOW_VENV)/.installed: requirements-airflow.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install -q -r requirements-airflow.txt
	touch $@

$(VENV)/.bench: requirements-bench.txt $(VENV)/.runtime
	$(BIN)/pip install -q -r requirements-bench.txt
	touch $@

venv: $(VENV)/.runtime
dev: $(VENV)/.dev

train: $(VENV)/.runtime
	$(BIN)/taktstock train config.yaml --evaluate

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint $(AIRFLOW_VENV)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile  # one worker per core; a test file stays on one worker (module fixtures)

# Regenerate the config reference after changing config/schema.py (a test fails when it is stale).
docs: $(VENV)/.runtime
	$(BIN)/taktstock config docs --out docs/config.md

# Benchmark suite (~3 min on 2 CPU cores); BENCH_ARGS e.g. "mlp --repeats 7" or "--device cuda".
BENCH_ARGS ?=
bench: $(VENV)/.bench
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf experiments/runs experiments/sweeps data/prepared
