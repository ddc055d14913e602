# Two entry points, each creating what it needs on a fresh clone: `make demo`, `make test`.
# `make demo` installs only what the demo needs; `make test` adds the test extras on top.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
# No --quiet: pip prints a line per package it collects and installs.
PIP := $(BIN)/pip install --progress-bar on

.PHONY: demo test test-random bench clean

$(BIN)/pip:
	@echo "==> creating $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The demo trains the digits example: torch and scikit-learn, no test, Dask or PostgreSQL
# extras. The pinned CPU build of torch first: an unpinned torch would pull a multi-GB
# CUDA build.
$(DEMO_STAMP): pyproject.toml | $(BIN)/pip
	@echo "==> [1/2] torch 2.13.0 (CPU build)"
	$(PIP) torch==2.13.0
	@echo "==> [2/2] flor-flows with the demo's extras (torch, examples)"
	$(PIP) -e '.[torch,examples]'
	touch $@

$(TEST_STAMP): $(DEMO_STAMP)
	@echo "==> the test extras on top (postgres, dask, test)"
	$(PIP) -e '.[torch,postgres,dask,examples,test]'
	touch $@

demo: $(DEMO_STAMP)
	$(BIN)/flor-flows demo

# The tests run on two workers, a test file each at a time (module fixtures stay in one
# process): most tests wait on child processes, so this halves the wall time on 2 cores.
# The files go in tests/conftest.py's order, the slowest first (not xdist's reordering by
# number of tests, which left the slowest files to start last).
test: $(TEST_STAMP)
	$(BIN)/ruff check flor_flows flows deployments tests bench examples
	$(BIN)/ruff format --check flor_flows flows deployments tests bench examples
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder

# The same tests in a random order, files and tests shuffled together (pytest-random-order),
# to show that none relies on another having run: SEED=<n> repeats an order, which the run
# prints in its header (`make test` keeps the order above: the plugin is off unless asked).
SEED ?= $(shell date +%s)
test-random: $(TEST_STAMP)
	$(BIN)/pytest -n 2 --dist loadfile -p random_order --random-order-bucket=global --random-order-seed=$(SEED)

bench: $(TEST_STAMP)
	bash bench/setup_flordb.sh
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV)
