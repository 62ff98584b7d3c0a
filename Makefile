# frozen_scale: two commands do all set-up on a fresh machine.
#   make demo   - create .venv, install, run the main job on the built-in world
#   make test   - create .venv, install, check the import layers, run the test suite
# Both install the versions pinned in constraints.txt; `make constraints` refreshes them.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
RUN_DIR ?= runs/demo
export DS_ACCELERATOR ?= cpu
# DeepSpeed JIT-compiles a small comm op on first use: build it per checkout, not in a shared cache
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch_extensions

.PHONY: demo test test-fast lint-imports bench bench-prep install constraints clean

# Installs go through constraints.txt: the versions the test suite passes with (make constraints).
$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	@# torch first (DeepSpeed's install needs it), at the version constraints.txt pins: the CPU build
	@# where the package index offers one for that version, else the default (CUDA) build.
	$(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/frozen-scale demo --run-dir $(RUN_DIR)

# the layers of docs/design.md: nothing imports upward (contracts in pyproject.toml)
lint-imports: install
	$(VENV)/bin/lint-imports

test: lint-imports
	$(PY) -m pytest -q --durations=25 tests

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

# Refresh constraints.txt: a fresh environment in a temp folder takes the newest versions
# pyproject.toml allows (no constraints; torch stays at the version pinned now: a torch change is
# made by editing its pin), the import layers and the tests run there (-m "not slow": the
# end-to-end tests take minutes each; CONSTRAINTS_TESTS changes the selection), and only if they
# pass is its pip freeze written to constraints.txt. The temp folder is removed either way.
CONSTRAINTS_TESTS ?= -m "not slow" tests
constraints:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	torch=$$(grep '^torch==' constraints.txt); \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install -q --upgrade pip setuptools wheel; \
	"$$tmp/venv/bin/pip" install -q "$$torch"; \
	"$$tmp/venv/bin/pip" install -q -e ".[test]"; \
	"$$tmp/venv/bin/lint-imports"; \
	TORCH_EXTENSIONS_DIR="$$tmp/torch_extensions" "$$tmp/venv/bin/python" -m pytest -q $(CONSTRAINTS_TESTS); \
	{ echo "# The versions the test suite passes with; \`make demo\` and \`make test\` install through this file."; \
	  echo "# Made by \`make constraints\` on $$(date +%F) ($$("$$tmp/venv/bin/python" -V), $$(uname -sm)): the newest"; \
	  echo "# versions pyproject.toml allows, torch kept at its pin, frozen after the import layers and"; \
	  echo "# pytest $(subst ",,$(CONSTRAINTS_TESTS)) passed there; torch without its local build tag (it takes"; \
	  echo "# the CPU or the CUDA build). Refresh: \`make constraints\`."; \
	  "$$tmp/venv/bin/pip" freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" constraints.txt; \
	echo "constraints.txt: $$(grep -c '==' constraints.txt) versions from the passing environment"

clean:
	rm -rf $(VENV) runs .pytest_cache
