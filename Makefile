# Two commands for a fresh machine: `make run` (install + the embedded default) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Telemetry off everywhere; W&B offline.
export ZENML_ANALYTICS_OPT_IN := false
export DVC_NO_ANALYTICS := 1
export WANDB_MODE := offline
export GX_ANALYTICS_ENABLED := false
export AUTO_OPEN_DASHBOARD := false

.PHONY: install run test benchmark clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar off -e '.[test]'
	touch $@

install: $(BIN)/.installed

.zen: | $(BIN)/.installed
	$(BIN)/zenml init

# The embedded default: digits -> teacher -> one-step DMD2 -> FIDs, on the active ZenML stack.
run: install .zen
	$(BIN)/zenml pipeline run pipelines.dmd2_pipeline -c configs/dmd2_local.yaml

# Component, step and pipeline tests (CPU, a few minutes). No tests collected (exit 5) is a failure.
test: install
	$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

benchmark: install
	$(BIN)/python benchmarks/quality.py

clean:
	rm -rf .benchmarks .pytest_cache
