# The README's two commands: `make demo` (the main job) and `make test` (the tests).
SHELL := /bin/bash
PYTHON ?= python3
# Use the active virtual environment when there is one, else .venv in the checkout.
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
BIN := $(VENV)/bin
STAMP := $(VENV)/.kml-installed

.PHONY: install stack demo demo-online test lint format bench clean images test-images

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

demo-online: stack  # a drifting stream: frozen vs online accuracy per window, stream.png
	$(BIN)/kml demo online

test: stack
	$(BIN)/python -m pytest

# The three function images (buildah, vfs, chroot isolation; caches under KML_CACHE_DIR/images).
images: install
	$(BIN)/python -m kml.dev.images build

# The images started against the real local stack (marker `images`, left out of `make test`).
test-images: images stack
	$(BIN)/python -m pytest -m images -s tests/images

lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Known vulnerabilities in requirements.lock: exit 1 on any (pip-audit, or the package index's
# own advisories where the OSV service is out of reach). AUDIT_IGNORE: ids documented in README.
AUDIT_IGNORE ?=
.PHONY: audit lock
audit: install
	$(BIN)/python -m kml.dev.audit requirements.lock $(foreach id,$(AUDIT_IGNORE),--ignore-vuln $(id))

# Regenerate requirements.lock from pyproject.toml's pins (pip-tools, hashes, no index URLs).
lock: install
	$(BIN)/pip-compile -q --extra cli --extra train --extra infer --extra dev --generate-hashes \
	  --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	  -o requirements.lock pyproject.toml

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: stack
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache
