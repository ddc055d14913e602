# Two entry points, each creating what it needs on a fresh clone: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The pinned CPU build first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[torch,postgres,dask,examples,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/flor-flows demo

# The tests run on two workers, a test file each at a time (module fixtures stay in one
# process): most tests wait on child processes, so this halves the wall time on 2 cores.
test: $(STAMP)
	$(BIN)/ruff check flor_flows flows deployments tests bench examples
	$(BIN)/ruff format --check flor_flows flows deployments tests bench examples
	$(BIN)/pytest -n 2 --dist loadfile

bench: $(STAMP)
	bash bench/setup_flordb.sh
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV)
