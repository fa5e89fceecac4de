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

# Every number and figure the docs quote from the bundled checkpoints, regenerated after retraining
# (about 15 minutes on 2 cores). Study outputs go to out/NAME; the figures the docs show are copied
# to docs/figures/. The depth tables (diffinterp depth) do not depend on the weights.
STUDIES := non-chronological:100 smearing:100 intermediate-context:100 monitorability:400 \
	self-correction:200 variable-transparency:100
results: install
	$(BIN)/python -m diffinterp.cli eval --task all --by-case --save diffinterp/assets/diffusion/eval_results.json
	$(BIN)/python -m diffinterp.cli eval --task all --by-case --model ar --save diffinterp/assets/ar/eval_results.json
	$(BIN)/python benchmarks/sampler_grid.py --json out/benchmarks/sampler_grid.json
	$(BIN)/python benchmarks/instrument_examples.py
	$(BIN)/python benchmarks/viewer_examples.py
	set -e; for spec in $(STUDIES); do name=$${spec%%:*}; n=$${spec##*:}; dir=$$(echo $$name | tr - _); \
		$(BIN)/python -m diffinterp.cli case-study $$name --n $$n --out out/$$dir; \
		figs=docs/figures/case-studies/$$name; [ $$name = variable-transparency ] && figs=docs/figures/$$dir; \
		for f in $$figs/*.png; do cp out/$$dir/$$(basename $$f) $$f; done; done
	for name in non-chronological smearing self-correction; do dir=$$(echo $$name | tr - _); \
		$(BIN)/python -m diffinterp.cli case-study $$name --n 100 --bottleneck argmax --out out/$${dir}_argmax; done
	$(BIN)/python -m diffinterp.cli case-study self-correction --n 100 --out out/self_correction_n100
	$(BIN)/python -m diffinterp.cli case-study smearing --n 100 --bottleneck none --out out/smearing_no_selfcond
	$(BIN)/python benchmarks/patching_sweep.py --json out/benchmarks/patching_sweep.json
	$(BIN)/python benchmarks/cache_overhead.py --repeats 15 --threads 1
	$(BIN)/python benchmarks/cache_overhead.py --repeats 15 --threads 1 --all-steps \
		--json out/benchmarks/cache_overhead_all_steps.json

clean:
	rm -rf $(VENV) out .pytest_cache
