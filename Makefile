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

.PHONY: install test test-all test-verl wheel-check demo bench bench-quick lint format clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) "torch==$(TORCH_VERSION)"
	$(PY) -m pip install $(PIP_FLAGS) -e ".[hf,trl,bench,dev]"
	touch $(STAMP)

install: $(STAMP)

# verl pins an older transformers than the main environment, so its plug-in is tested in
# its own environment. The constraints file keeps pip from replacing the pinned torch.
VERL_VENV ?= .venv-verl
VERL_PY := $(VERL_VENV)/bin/python
VERL_STAMP := $(VERL_VENV)/.installed
VERL_VERSION ?= 0.9.1

$(VERL_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_PY) -m pip install --upgrade pip
	$(VERL_PY) -m pip install $(PIP_FLAGS) "torch==$(TORCH_VERSION)"
	echo "torch==$(TORCH_VERSION)" > $(VERL_VENV)/constraints.txt
	$(VERL_PY) -m pip install $(PIP_FLAGS) -c $(VERL_VENV)/constraints.txt \
		"verl[verl-core]==$(VERL_VERSION)" -e ".[verl]" "pytest>=8" "hypothesis>=6.100"
	touch $(VERL_STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

# Only the verl plug-in's tests: they skip in the main environment, which has no verl.
test-verl: $(VERL_STAMP)
	$(VERL_PY) -m pytest -p no:asyncio tests/test_verl_*.py $(PYTEST_ARGS)

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
	rm -rf $(VENV) $(VERL_VENV) build *.egg-info .pytest_cache .benchmarks
