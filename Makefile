# memeserve — the commands of DESIGN.md §3. Everything installs itself into .venv/.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
CONFIG ?= autoscale_configs/dev-cpu.yaml
# The local CPU build of PyTorch. Installing it first, pinned, keeps pip from
# resolving `torch` to the registry's CUDA build (several GB of nvidia packages).
TORCH_PIN := torch==2.13.0
CJK_FONT  := /usr/share/fonts/truetype/wqy/wqy-microhei.ttc
PYTEST_ARGS ?=

.PHONY: help install run test test-unit test-integration test-e2e check lint typecheck \
        check-config bench system-deps clean

help:
	@echo "make run      start the service on $(CONFIG) (CONFIG=... for another profile)"
	@echo "make test     install what is needed and run the whole test suite"
	@echo "make check    lint (ruff) and type check (mypy)"
	@echo "make check-config  validate every shipped profile"
	@echo "make bench    latency of the running graph (starts the CPU profile itself)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]" "$(TORCH_PIN)"
	touch $(STAMP)

install: $(STAMP)

# Debian's CJK font, used by the tests and benchmarks to draw Chinese memes.
system-deps:
	@if [ ! -f "$(CJK_FONT)" ]; then \
	  echo "installing fonts-wqy-microhei (CJK font for synthesised test memes)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei >/dev/null; \
	fi

run: install
	$(BIN)/memeserve run --config $(CONFIG)

test: install system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install system-deps
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: install system-deps
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: install system-deps
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check serve_app deployments tests loadtest
	$(BIN)/ruff format --check serve_app deployments tests loadtest

typecheck: install
	$(BIN)/mypy

check: lint typecheck

check-config: install
	$(BIN)/memeserve check-config autoscale_configs/*.yaml

bench: install system-deps
	$(PY) -m loadtest.bench_latency --config $(CONFIG)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
