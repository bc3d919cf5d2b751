# Every target sets itself up from nothing: a virtual environment with torch
# pinned first (a CPU build where one lies on disk), then the package.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
WHEELS := $(wildcard /opt/wheels)
PIP_FLAGS := $(if $(WHEELS),--find-links $(WHEELS),)
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-all wheel-check demo bench bench-quick lint format clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) "torch==$(TORCH_VERSION)"
	$(PY) -m pip install $(PIP_FLAGS) -e ".[hf,trl,bench,dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

# The built wheel in a fresh virtual environment outside the checkout: example, bench --quick,
# the integrations' imports (.ci/wheel_check.sh).
wheel-check: $(STAMP)
	PY=$(PY) PIP_FLAGS="$(PIP_FLAGS)" TORCH_VERSION=$(TORCH_VERSION) .ci/wheel_check.sh

demo: $(STAMP)
	$(VENV)/bin/paretoopt demo $(DEMO_ARGS)

# The full suites under pytest-benchmark (bench/), then the report from their JSON.
# `paretoopt bench --out DIR` runs the same suites without pytest (from a wheel too).
BENCH_THREADS := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

bench: $(STAMP)
	$(BENCH_THREADS) $(PY) -m pytest bench/ --bench-profile=full --benchmark-json=docs/bench.json \
		--benchmark-columns=median,rounds -p no:cacheprovider -v
	$(PY) -m paretoopt.integrations.bench.report --json docs/bench.json --out docs

bench-quick: $(STAMP)
	$(VENV)/bin/paretoopt bench --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check paretoopt integrations tests bench
	$(VENV)/bin/ruff format --check paretoopt integrations tests bench

format: $(STAMP)
	$(VENV)/bin/ruff format paretoopt integrations tests bench
	$(VENV)/bin/ruff check --fix paretoopt integrations tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .benchmarks
