"""Fixtures shared by every tier: the local control plane and a namespace per test.

Tests that need a cluster take the ``cluster`` or ``namespace`` fixture (or carry
the ``cluster`` marker); the control plane is started once per session, on first
use, so a run of unit tests alone never builds or starts it.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from kubernetes import client, config

from firebreak.actions.base import ActionContext, IncidentRef
from firebreak.api import Target, TargetKind
from firebreak.config import OperatorConfig
from firebreak.kube import Kube
from tests.controlplane import LocalCluster, RealNode
from tests.helpers import deployment, running_pods, wait_for

REPO = Path(__file__).resolve().parent.parent

# Property tests explore new inputs on every developer run; CI (HYPOTHESIS_PROFILE=ci)
# replays the same derandomized examples, so a red CI always means a change did it.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    nodes = int(os.environ.get("FIREBREAK_TEST_NODES", "3"))
    with LocalCluster.started(nodes=nodes) as running:
        yield running


@pytest.fixture(scope="session")
def real_node(cluster: LocalCluster) -> RealNode:
    """The cluster's real node. Where the host cannot run one, tests that need it are
    skipped with the reason (or fail, with FIREBREAK_REQUIRE_REAL_NODE=1, as in CI);
    a node that could run but failed to start is an error."""
    if cluster.real_node_failure:
        pytest.fail(cluster.real_node_failure)
    if cluster.real_node is None:
        reason = cluster.real_node_unavailable or "the cluster was started without one"
        if os.environ.get("FIREBREAK_REQUIRE_REAL_NODE") == "1":
            pytest.fail(f"a real node is required (FIREBREAK_REQUIRE_REAL_NODE=1): {reason}")
        pytest.skip(f"no real node: {reason}")
    return cluster.real_node


@pytest.fixture(scope="session")
def crds(cluster: LocalCluster) -> None:
    """Firebreak's CustomResourceDefinitions, installed and Established."""
    cluster.kubectl("apply", "-k", str(REPO / "crds"))
    cluster.wait_established("securityincidents.firebreak.dev", "responseplaybooks.firebreak.dev")


@pytest.fixture(scope="session")
def api_client(cluster: LocalCluster) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


@pytest.fixture(scope="session")
def apps(api_client: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api_client)


@pytest.fixture
def namespace(core: client.CoreV1Api, cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=name, labels={"firebreak.dev/test": "true"})))
    # Pods are refused until the namespace's default ServiceAccount exists.
    wait_for(lambda: core.list_namespaced_service_account(name).items,
             what=f"the default ServiceAccount in {name}")
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def kubeconfig(cluster: LocalCluster) -> Path:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def kube(api_client: client.ApiClient) -> Kube:
    return Kube(api_client)


@pytest.fixture
def make_context(kube: Kube, namespace: str) -> Callable[..., ActionContext]:
    """Build an ActionContext for an incident in the test's namespace."""

    def make(kind: str, name: str, *, target_namespace: str | None = None,
             step: str = "step", config: OperatorConfig | None = None,
             incident: str | None = None) -> ActionContext:
        target_ns = None if kind == "Node" else (target_namespace or namespace)
        return ActionContext(
            kube=kube,
            config=config or OperatorConfig(namespace="firebreak-system"),
            incident=IncidentRef(namespace=namespace, name=incident or "incident-1",
                                 uid=str(uuid.uuid4())),
            target=Target(kind=TargetKind(kind), namespace=target_ns, name=name),
            step=step,
            labels={},
            now=dt.datetime.now(dt.UTC),
        )

    return make


@pytest.fixture
def make_app(core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str
             ) -> Callable[..., list[client.V1Pod]]:
    """Create a Deployment and wait until all of its pods run; return the pods."""

    def make(name: str = "web", replicas: int = 2, **pod_spec: object) -> list[client.V1Pod]:
        apps.create_namespaced_deployment(namespace, deployment(name, replicas, **pod_spec))
        return wait_for(
            lambda: (p := running_pods(core, namespace, name)) and len(p) == replicas and p,
            timeout=60, what=f"{replicas} running pods of {name}")

    return make
