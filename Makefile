# Two commands on a fresh machine with nothing but Python 3.11:
#   make demo   install into .venv and run the demo on the bundled model (figures in out/)
#   make test   install into .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench results clean

$(BIN)/diffinterp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: a CPU build from local disk here (a looser spec pulls a CUDA build)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/diffinterp

demo: install
	$(BIN)/diffinterp demo

test: install
	# two workers, one test file each at a time (module fixtures are built once per file)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports --no-cache

bench: install
	$(BIN)/python benchmarks/cache_overhead.py

# Every number and figure the docs quote from the shipped checkpoints (about an hour on 2 cores):
# organism gates, the case studies on their organisms, the benchmarks the docs cite.
results: install
	PY=$(BIN)/python scripts/docs_results.sh

clean:
	rm -rf $(VENV) out .pytest_cache
