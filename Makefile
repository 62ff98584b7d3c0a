# frozen_scale: two commands do all set-up on a fresh machine.
#   make demo   - create .venv, install, run the main job on the built-in world
#   make test   - create .venv, install, check the import layers, run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
RUN_DIR ?= runs/demo
export DS_ACCELERATOR ?= cpu
# DeepSpeed JIT-compiles a small comm op on first use: build it per checkout, not in a shared cache
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch_extensions

.PHONY: demo test test-fast lint-imports bench bench-prep install clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	@# CPU-only machines get the CPU build of torch; with CUDA present, the default build.
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA found: installing torch (CUDA build)"; $(PIP) install -q "torch>=2.3,<2.15"; \
	else \
		echo "no CUDA: installing the CPU build torch==2.13.0"; $(PIP) install -q torch==2.13.0; \
	fi
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/frozen-scale demo --run-dir $(RUN_DIR)

# the layers of DESIGN.md: nothing imports upward (contracts in pyproject.toml)
lint-imports: install
	$(VENV)/bin/lint-imports

test: lint-imports
	$(PY) -m pytest -q tests

test-fast: lint-imports
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	$(PY) bench/step_overhead.py
	$(PY) bench/freeze_savings.py
	$(PY) bench/zero3_memory.py
	$(PY) bench/loader_throughput.py
	$(PY) bench/gpu.py --tiny
	$(PY) bench/big_lm.py

# data_prep against img2dataset, which lives in its own environment (not a project dependency):
# a 3,000- and a 20,000-image job; the last line is the ratio per core at 20,000
bench/.peer-venv/bin/img2dataset:
	$(PYTHON) -m venv bench/.peer-venv
	bench/.peer-venv/bin/pip install -q img2dataset

bench-prep: install bench/.peer-venv/bin/img2dataset
	$(PY) bench/prep_throughput.py --images 3000,20000

clean:
	rm -rf $(VENV) runs .pytest_cache
