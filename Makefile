# Every target documents itself: `make help` lists the lines marked with two hashes.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install test test-slow test-all lint format bench-optim data clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv with the package (editable) and the dev tools

test: $(STAMP) ## Run the default test suite (fast; slow tests are skipped)
	$(PY) -m pytest

test-slow: $(STAMP) ## Run only the slow tests (real CIFAR-10, compile, studies)
	$(PY) -m pytest -m slow

test-all: $(STAMP) ## Run every test
	$(PY) -m pytest -m ''

lint: $(STAMP) ## Run ruff
	$(VENV)/bin/ruff check dualadam tests scripts experiments

format: $(STAMP) ## Format and fix imports with ruff
	$(VENV)/bin/ruff check --fix dualadam tests scripts experiments
	$(VENV)/bin/ruff format dualadam tests scripts experiments

bench-optim: $(STAMP) ## Optimizer step time and memory vs torch Adam (foreach and fused), ResNet-18, 1 thread
	$(PY) scripts/bench_optim.py

escape: $(STAMP) ## Diffusion-theory escape experiment: SGD/Adam/InvAdam/DualAdam vs sharpness, Kramers check (~3 min)
	$(PY) experiments/escape/run.py --out results/escape --readme experiments/escape/README.md --readme README.md

data: $(STAMP) ## Unpack the shared CIFAR-10 copy (../shared/data) into $DUALADAM_DATA/cifar10 (default data/)
	$(PY) -m dualadam.data.prepare

clean: ## Remove caches (keeps .venv and outputs)
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
