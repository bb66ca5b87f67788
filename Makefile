# Two commands for a newcomer: `make run` (the service on the shipped demo models) and
# `make test` (lint and the whole test suite). Both set up .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned here (a CPU build lies on this machine's disk; see DEVELOPERS.md).
TORCH  ?= torch==2.13.0
HOST   ?= 127.0.0.1
PORT   ?= 8000
# Re-install only when the dependency list changes.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint bench demo-models clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	REACTKD_ENVIRONMENT=$${REACTKD_ENVIRONMENT:-development} $(BIN)/reactkd serve --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check models training app tests bench
	$(BIN)/ruff format --check models training app tests bench
	$(BIN)/mypy models training app bench

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

# Rebuild the shipped demo models from scratch with the project's own commands.
demo-models: $(STAMP)
	bash scripts/build_demo_models.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
