# Two commands on a fresh machine with nothing but Python 3.11:
#   make demo   install into .venv and run the demo on the bundled model (figures in out/)
#   make test   install into .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench clean

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
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/cache_overhead.py

clean:
	rm -rf $(VENV) out .pytest_cache
