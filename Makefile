# The one entry point. README commands are targets here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help venv demo test unit integration template lint typecheck format build bench databases clean

help:
	@echo "make demo | test | unit | integration | template | lint | build | bench | clean"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m ownpage_sync_tools.demo

databases:
	@scripts/start-databases.sh

test: $(STAMP) databases
	$(PY) -m pytest

unit: $(STAMP)
	$(PY) -m pytest -m unit

integration: $(STAMP) databases
	$(PY) -m pytest -m integration

template: $(STAMP)
	$(PY) -m pytest -m template

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

typecheck: $(STAMP)
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m ownpage_sync_tools.bench

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
