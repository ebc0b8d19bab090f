# mimiq: `make demo` (set up + run the embedded offline task) and `make test` (set up + run the tests).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and explicitly: these pins are served from local disk on the project's machines.
# On a cluster pick the build that matches your CUDA, e.g. TORCH_SPEC="torch==2.5.1 torchvision==0.20.1".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= disabled
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint format smoke clean clean-logs

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## create .venv and install torch + mimiq[dev] (idempotent)

demo: install ## run the main job on the embedded offline mini task (python train.py)
	$(PY) train.py $(ARGS)

test: install ## run the whole test suite (what CI runs)
	$(PY) -m pytest $(ARGS)

test-fast: install ## tests without the slow end-to-end ones
	$(PY) -m pytest -m "not slow" $(ARGS)

lint: install ## ruff check
	$(VENV)/bin/ruff check .

format: install ## ruff fix + format
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

smoke: install ## seconds-long end-to-end debug run
	$(PY) train.py debug=tiny $(ARGS)

clean-logs: ## remove Hydra run directories
	rm -rf logs outputs multirun

clean: clean-logs ## also remove caches (mini dataset, teachers, synthetic sets)
	rm -rf .cache .pytest_cache .ruff_cache
