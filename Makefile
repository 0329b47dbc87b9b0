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
test: install controlplane alerting lint
	$(PY) -m pytest

## Real Prometheus and Alertmanager for tests/alerting.py, from Debian's packages.
## The packages register system services; a policy-rc.d (ours only when none is
## there) keeps them from starting, and they are disabled afterwards, so nothing
## holds 9090/9093/9100: the tests run their own processes on free loopback ports.
.PHONY: alerting
alerting:
	@if command -v prometheus >/dev/null && command -v prometheus-alertmanager >/dev/null; then exit 0; fi; \
	set -e; sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	policy=/usr/sbin/policy-rc.d; ours=; \
	if [ ! -e $$policy ]; then \
	  printf '#!/bin/sh\nexit 101\n' | $$sudo tee $$policy >/dev/null; $$sudo chmod 755 $$policy; ours=1; \
	fi; \
	trap '[ -z "$$ours" ] || $$sudo rm -f $$policy' EXIT; \
	$$sudo apt-get update; \
	$$sudo env DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y --no-install-recommends prometheus prometheus-alertmanager; \
	for service in prometheus prometheus-alertmanager prometheus-node-exporter; do \
	  if [ -d /run/systemd/system ]; then \
	    $$sudo systemctl disable --now $$service >/dev/null 2>&1 || true; \
	  elif command -v update-rc.d >/dev/null; then \
	    $$sudo update-rc.d $$service disable >/dev/null 2>&1 || true; \
	  fi; \
	done

## Only the tests that need no cluster: pure logic, and the engine over an in-memory API.
unit: install
	$(PY) -m pytest tests/unit tests/engine

lint: install
	$(VENV)/bin/ruff check operator tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

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
