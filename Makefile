# The one entry point. README commands are targets here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# SAM CLI lives in its own virtualenv: its pins must not fight moto's or cfn-lint's.
SAM_VENV  := .venv-sam
SAM       := $(SAM_VENV)/bin/sam
SAM_STAMP := $(SAM_VENV)/.installed
export SAM_CLI_TELEMETRY := 0
# sam build's output doubles as the build stamp: rebuilt when the template, the pins, the library,
# a handler or a build Makefile changes.
BUILT        := .aws-sam/build/template.yaml
BUILD_INPUTS := template.yaml samconfig.toml requirements.txt $(shell find layers functions -type f \( -name '*.py' -o -name Makefile \) -not -path '*/__pycache__/*' 2>/dev/null)

.PHONY: help venv sam demo demo-postgresql demo-mysql test unit integration template lint typecheck format build bench databases clean

help:
	@echo "make demo | test | unit | integration | template | lint | build | bench | clean"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

venv: $(STAMP)

$(SAM_STAMP): requirements-sam.txt
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-sam.txt
	touch $@

sam: $(SAM_STAMP)

# Layer and functions through their Makefiles (BuildMethod: makefile); the layer's pip runs on the
# project venv's Python but fetches wheels for Lambda (arm64, CPython 3.13).
$(BUILT): $(SAM_STAMP) $(STAMP) $(BUILD_INPUTS)
	PYTHON=$(abspath $(PY)) $(SAM) build
	@touch $@

build: $(BUILT)
	@echo "OwnpageSyncLayer: $$(du -sh .aws-sam/build/OwnpageSyncLayer* | cut -f1) unzipped (Lambda allows 250 MB for a function and its layers)"

demo: $(STAMP)
	$(PY) -m ownpage_sync_tools.demo

demo-postgresql: $(STAMP) databases
	$(PY) -m ownpage_sync_tools.demo --source postgresql

demo-mysql: $(STAMP) databases
	$(PY) -m ownpage_sync_tools.demo --source mysql

databases:
	@scripts/start-databases.sh

# Everything: unit, integration and template tests, the latter on a fresh `sam build` and with the
# SAM CLI present (the REQUIRE_* variables turn their skips into failures).
test: $(STAMP) databases build
	OWNPAGE_SYNC_REQUIRE_BUILD=1 OWNPAGE_SYNC_REQUIRE_SAM=1 $(PY) -m pytest

unit: $(STAMP)
	$(PY) -m pytest -m unit

integration: $(STAMP) databases
	$(PY) -m pytest -m integration

template: $(STAMP) build
	OWNPAGE_SYNC_REQUIRE_BUILD=1 OWNPAGE_SYNC_REQUIRE_SAM=1 $(PY) -m pytest -m template

lint: $(STAMP) $(SAM_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/cfn-lint template.yaml
	$(SAM) validate --lint --template-file template.yaml

typecheck: $(STAMP)
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Full syncs at 10k, 100k and 1M (PostgreSQL; DynamoDB in moto at 10k), the I/O floor, the read with
# 1 s of latency per call, a run under faults: about 10 minutes. Exits non-zero if a run did not converge.
# Smaller: make bench BENCH_ARGS="--sizes 10000 100000"
bench: $(STAMP) databases
	$(PY) -m ownpage_sync_tools.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(SAM_VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
