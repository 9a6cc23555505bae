# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Both are idempotent: the venv is only (re)installed when pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
export APP_DEV ?= 1
export APP_DATA_DIR ?= data

.DEFAULT_GOAL := help
.PHONY: help run serve test test-fast lint type convert train bench bench-quick docker clean redteam

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Serving dependencies only: no TensorFlow.
$(VENV)/.serve-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e .
	@touch $@

# dev (pytest, linters), conversion (TensorFlow, tf2onnx) and bench (harness, baseline): the
# tests exercise all three.
$(VENV)/.test-installed: pyproject.toml $(VENV)/.serve-installed
	$(PIP) install -e '.[dev,conversion,bench]'
	@touch $@

# What the benchmarks need, without the test tools.
$(VENV)/.bench-installed: pyproject.toml $(VENV)/.serve-installed
	$(PIP) install -e '.[bench]'
	@touch $@

run: $(VENV)/.serve-installed ## install serving deps, migrate, serve the bundled model on http://127.0.0.1:8000
	$(PY) -m app migrate
	$(PY) -m app serve

test: $(VENV)/.test-installed ## install dev + conversion + bench extras and run the whole test suite
	$(PY) -m pytest

test-fast: $(VENV)/.test-installed ## the suite without slow, browser and TensorFlow tests
	$(PY) -m pytest -m "not slow and not browser and not tensorflow"

redteam: $(VENV)/.test-installed ## replay the hostile corpus against a running server, print what held
	$(PY) -m tests.hardening.replay

lint: $(VENV)/.test-installed ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

type: $(VENV)/.test-installed ## mypy --strict on app/, conversion/ and benchmarks/
	$(VENV)/bin/mypy

train: $(VENV)/.test-installed ## retrain the shipped model (about an hour on 2 CPU cores)
	$(PY) -m training train --arch mobilenet_025 --size 160x120 --epochs 24 -o models/skin_lesion.h5

convert: $(VENV)/.test-installed ## Keras HDF5 -> ONNX -> INT8 ONNX, verify, manifest, Triton repo
	$(PY) -m conversion build tests/fixtures/upstream_skin.h5 -o models/upstream --triton models/triton \
	  --name upstream_skin --input-scale 1/255 \
	  --training-data "HAM10000 (upstream Flask app; trained with test leakage)" \
	  --license "MIT (model); HAM10000 images CC BY-NC-SA 4.0"
	$(PY) -m conversion build models/skin_lesion.h5 -o models --triton models/triton
	$(PY) -m conversion cam models/skin_lesion.onnx

bench: $(VENV)/.bench-installed ## all benchmark suites (builds the peers' venvs once); writes benchmarks/results/ and RESULTS.md
	$(PY) -m benchmarks run

bench-quick: $(VENV)/.bench-installed ## tiny versions of every suite (a few minutes; peers without a venv are skipped)
	$(PY) -m benchmarks run --quick

docker: ## build the CPU and CUDA images (needs a Docker engine)
	docker build -t skin-lesion-service:cpu -f Dockerfile .
	docker build -t skin-lesion-service:cuda -f Dockerfile.cuda .

clean: ## remove the venv and caches (keeps data/)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
