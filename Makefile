# reportgen — `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := models/traffic_signs

.DEFAULT_GOAL := help
.PHONY: help setup report test test-fast lint format bench train-demo update-gold clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## Create .venv and install reportgen (editable) with the dev tools
	@echo "ready: $(BIN)/reportgen"

report: $(STAMP) ## Build the demo model's report into reports/demo/
	$(BIN)/reportgen build --model $(DEMO)/model.py:TrafficSignNet --out reports/demo
	@echo "open reports/demo/report.html"

# Test files run in parallel worker processes, one file per worker so that a module's fixtures are
# built once; the report builds overlap their single-threaded compiling and drawing that way.
PYTEST := $(BIN)/python -m pytest -q --numprocesses=auto --maxprocesses=4 --dist=loadfile --durations=10

test: $(STAMP) ## Run the whole test suite, slow end-to-end tests included
	$(PYTEST)

test-fast: $(STAMP) ## Run the tests without the slow end-to-end ones
	$(PYTEST) -m "not slow"

lint: $(STAMP) ## ruff format check, ruff check and mypy
	$(BIN)/ruff format --check reportgen tests models benchmarks
	$(BIN)/ruff check reportgen tests models benchmarks
	$(BIN)/mypy

format: $(STAMP) ## Apply ruff formatting and fixes
	$(BIN)/ruff format reportgen tests models benchmarks
	$(BIN)/ruff check --fix reportgen tests models benchmarks

bench: $(STAMP) ## Run the benchmarks (not part of the tests): engine, Captum side by side, scaling
	$(BIN)/python -c "import torch, captum" 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/peer_captum.py
	$(BIN)/python benchmarks/scale.py

train-demo: $(STAMP) ## Retrain the demo model from scratch (about 10 minutes on 2 cores)
	$(BIN)/python $(DEMO)/train.py

update-gold: $(STAMP) ## Regenerate the gold HTML file used by tests/test_gold.py, then check it
	-REPORTGEN_UPDATE_GOLD=1 $(BIN)/python -m pytest -q tests/test_gold.py
	$(BIN)/python -m pytest -q tests/test_gold.py

clean: ## Remove the virtual environment, reports and caches
	rm -rf $(VENV) reports .pytest_cache .ruff_cache .mypy_cache
