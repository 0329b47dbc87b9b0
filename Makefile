# Firebreak's commands. Every target installs what it needs on a fresh machine:
# a virtualenv with the locked Python dependencies, and (for anything that needs a
# cluster) the cluster's binaries built from upstream Go source, cached, and the
# Debian packages of its real node.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
UV_VERSION := 0.13.9

.PHONY: all install test unit lint mutation cluster cluster-down demo bench controlplane clean \
	image lock

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

## The operator's image, without a container engine or a registry: Debian's packages (through
## this machine's apt), the runtime-only lock, this checkout; dist/firebreak-<version>.tar.
## Cached per layer in ~/.cache/firebreak/image/ (override: FIREBREAK_IMAGE_CACHE).
image: install
	$(PY) -m image

## requirements-runtime.lock from requirements.lock: the runtime part, same versions and hashes.
lock: install
	$(PY) -m image.lock

## Everything: lint, types, unit tests, and the tests against the local control plane
## (the install test runs the image on the real node). Where the image cannot be built
## (no Debian bookworm apt), its tests are skipped and say why, as the real node's are;
## with FIREBREAK_REQUIRE_REAL_NODE=1 (CI) that stops here instead.
test: install controlplane nodepackages alerting lint
	@$(PY) -m image || [ "$$FIREBREAK_REQUIRE_REAL_NODE" != 1 ]
	$(PY) -m pytest

## Real Prometheus and Alertmanager for tests/alerting.py, from Debian's packages,
## kept from starting as services: the tests run their own on free loopback ports.
.PHONY: alerting
alerting:
	@tests/debian-packages.sh prometheus prometheus-alertmanager

## What the real test node runs, from Debian's packages: containerd, runc, the CNI
## plugins, iptables/ipset/nftables (for the policy enforcer and the clean-up),
## busybox for test images, gcc for the pause program. Without apt-get the real-node
## tests are skipped and say why.
REAL_NODE_PACKAGES := containerd runc containernetworking-plugins iptables ipset nftables \
	busybox-static gcc libc6-dev
.PHONY: nodepackages
nodepackages:
	@if command -v apt-get >/dev/null; then tests/debian-packages.sh $(REAL_NODE_PACKAGES); \
	else echo "no apt-get here: the real node cannot be installed (its tests will say so)"; fi

## Only the tests that need no cluster: pure logic, and the engine over an in-memory API.
unit: install
	$(PY) -m pytest tests/unit tests/engine

## Mutation testing of the pure modules against tests/unit; fails under 95% on any module.
## Report (scores, surviving mutants) in mutation-report/.
mutation: install
	$(PY) -m tests.mutation --fail-under 95

lint: install
	$(VENV)/bin/ruff check operator tests image
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## A local control plane left running; kubeconfig at .cluster/kubeconfig.
cluster: controlplane nodepackages
	$(PY) -m tests.controlplane up --dir .cluster

cluster-down: install
	$(PY) -m tests.controlplane down --dir .cluster

demo: controlplane nodepackages
	$(PY) -m tests.demo

## The whole path under load (kwok nodes), two replicas and their failover, then the
## dataplane on the real node.
bench: controlplane nodepackages
	$(PY) -m tests.bench
	$(PY) -m tests.bench_ha
	$(PY) -m tests.bench_dataplane

clean: cluster-down
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist
