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

# pytest on two workers (pytest-xdist); tests/conftest.py groups the tests that share expensive fixtures
PYTEST_ARGS := -q -rs -n 2 --dist loadgroup

.PHONY: install browser data fashion-mnist run repro test benchmark leaderboard kubeflow-compile clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar off -e '.[test]'
	touch $@

install: $(BIN)/.installed

.zen: | $(BIN)/.installed
	$(BIN)/zenml init

# The built-in digits written into data/ - the same bytes on every machine, so the committed
# data.dvc holds (the check below says so). Your own data: docs/data.md.
data/digits.npz: | $(BIN)/.installed
	$(BIN)/python -m components.data.builtin --out $@

data: data/digits.npz
	$(BIN)/python -m components.data.versioning data/digits.npz

# Fashion-MNIST (the benchmark dataset) from Debian's dataset-fashion-mnist package (apt, installed if missing),
# converted into data/fashion_mnist.npz (the official split kept; tracked by data/fashion_mnist.npz.dvc).
data/fashion_mnist.npz: | $(BIN)/.installed
	scripts/fashion_mnist.sh
	$(BIN)/python -m components.data.fashion_mnist --out $@

fashion-mnist: data/fashion_mnist.npz
	$(BIN)/python -m components.data.versioning data/fashion_mnist.npz

# The embedded default: digits -> validate -> teacher -> one-step DMD2 -> FIDs, on the active ZenML stack
# (the short form finds its run config, configs/dmd2_local.yaml; `-c` selects another).
run: install .zen data
	$(BIN)/zenml pipeline run dmd2_pipeline

# The same result rebuilt by DVC from dvc.yaml + params*.yaml (stages run the venv's python); the text-to-image
# chain reads Fashion-MNIST.
repro: install data data/fashion_mnist.npz
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Debian's chromium (apt) for the dashboard browser test; Playwright comes with the test extras.
browser: install
	VENV=$(VENV) scripts/browser.sh

# Component, step, pipeline, infra and browser tests (CPU; measured duration in docs/testing.md). No tests collected (exit 5) is a failure.
test: install browser
	scripts/fashion_mnist.sh >/dev/null   # Debian's Fashion-MNIST files: test_fashion_mnist checks the committed .dvc
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

benchmark: install
	$(BIN)/python benchmarks/quality.py

# the leaderboard (benchmarks/leaderboard.yaml): docs/results/<dataset>.json, pictures and docs/results.md
leaderboard: install data/digits.npz data/fashion_mnist.npz
	$(BIN)/python benchmarks/leaderboard.py --write-docs

# dmd2_pipeline compiled by ZenML's Kubeflow orchestrator to a KFP v2 YAML, offline (no cluster, no Docker):
# infra/kubeflow/ (docs/kubernetes.md). It hashes data/ as a run would, so it needs the data.
kubeflow-compile: install data/digits.npz
	$(BIN)/python -m infra.kubeflow.compile --config configs/dmd2_kubeflow.yaml --out build/kubeflow/dmd2_pipeline.yaml
	$(BIN)/python -m infra.kubeflow.compile --config configs/ctm_kubeflow.yaml --out build/kubeflow/ctm.yaml

clean:
	rm -rf .benchmarks .pytest_cache
