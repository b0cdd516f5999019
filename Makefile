PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: run test check bench install dev clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(DEVSTAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

dev: $(DEVSTAMP)

run: $(STAMP)
	$(BIN)/ai-gateway serve

test: $(DEVSTAMP)
	$(BIN)/python -m pytest tests

check: $(DEVSTAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(DEVSTAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
