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

.PHONY: install test test-all test-verl demo bench bench-quick lint format clean

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

demo: $(STAMP)
	$(VENV)/bin/paretoopt demo $(DEMO_ARGS)

bench: $(STAMP)
	$(VENV)/bin/paretoopt bench --out docs

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
