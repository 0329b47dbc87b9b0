# Firebreak's commands. Every target installs what it needs on a fresh machine:
# a virtualenv with the locked Python dependencies, and (for anything that needs a
# cluster) the control-plane binaries built from upstream Go source, cached.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
UV_VERSION := 0.13.9

.PHONY: all install test unit lint cluster cluster-down demo bench controlplane clean

all: test

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync --quiet --python $(PY) requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .
	touch $@

install: $(VENV)/.installed

## Build (or find in the cache) kube-apiserver, etcd, kwok and friends.
controlplane: install
	$(PY) -m tests.controlplane build

## Everything: lint, types, unit tests, and the tests against the local control plane.
test: install controlplane lint
	$(PY) -m pytest

## Only the tests that need no cluster.
unit: install
	$(PY) -m pytest tests/unit

lint: install
	$(VENV)/bin/ruff check operator tests
	$(VENV)/bin/mypy

## A local control plane left running; kubeconfig at .cluster/kubeconfig.
cluster: controlplane
	$(PY) -m tests.controlplane up --dir .cluster

cluster-down: install
	$(PY) -m tests.controlplane down --dir .cluster

demo: controlplane
	$(PY) -m tests.demo

bench: controlplane
	$(PY) -m tests.bench

clean: cluster-down
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
