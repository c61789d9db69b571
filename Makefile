# The README's two commands: `make demo` (the main job) and `make test` (the tests).
SHELL := /bin/bash
PYTHON ?= python3
# Use the active virtual environment when there is one, else .venv in the checkout.
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
BIN := $(VENV)/bin
STAMP := $(VENV)/.kml-installed

.PHONY: install stack demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[cli,train,infer,dev]'
	touch $(STAMP)

install: $(STAMP)

stack: install
	$(BIN)/kml dev fetch
	$(BIN)/python -m functions.dashboard.assets

demo: stack
	$(BIN)/python -m kml.demo

test: stack
	$(BIN)/python -m pytest

lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: stack
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache
