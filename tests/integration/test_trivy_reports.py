"""Trivy Operator's ExposedSecretReport and ConfigAuditReport on a real API server.

Each documented sample, created for a real Deployment's ReplicaSet, is read back
from the API server as Kopf's watch delivers it and given to the operator's
handler: it opens one incident on the Deployment; deleted and created again (as
Trivy does on its TTL), it opens nothing new and is counted on the same incident.
The exposed secret's incident is then answered by the ready playbook in
playbooks/, and resolved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from kubernetes import client

from firebreak import handlers
from firebreak.actions import registry
from firebreak.api import ResponsePlaybookSpec
from firebreak.config import OperatorConfig
from firebreak.controller import Controller
from firebreak.engine import Engine
from firebreak.events import EventPoster, post_event
from firebreak.intake import Intake
from firebreak.kube import Kube
from firebreak.matching import PlaybookCandidate
from firebreak.readiness import PlaybookReadiness
from firebreak.sources.trivy import TrivyThresholds
from tests.controlplane import LocalCluster
from tests.helpers import GROUP, OPERATOR_NS, VERSION, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]
REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
TRIVY_GROUP, TRIVY_VERSION = "aquasecurity.github.io", "v1alpha1"
LOG = logging.getLogger(__name__)
KINDS = {
    "exposedsecretreports": ("trivy_ExposedSecretReport_replicaset-app-67b77f5965-app_docs.yaml",
                             handlers.exposed_secret_report, "ExposedSecret"),
    "configauditreports": ("trivy_ConfigAuditReport_replicaset-nginx-6d4cf56db6_docs.yaml",
                           handlers.config_audit_report, "MisconfiguredWorkload"),
}


@pytest.fixture(scope="module")
def trivy_crds(cluster: LocalCluster) -> Iterator[None]:
    paths = [FIXTURES / "crds" / f"{plural}.{TRIVY_GROUP}.yaml" for plural in KINDS]
    for path in paths:
        cluster.kubectl("apply", "-f", str(path))
    cluster.wait_established(*(f"{plural}.{TRIVY_GROUP}" for plural in KINDS))
    yield
    for path in paths:
        cluster.kubectl("delete", "-f", str(path), "--wait=false")


@pytest.fixture
def memo(kube: Kube, cluster: LocalCluster) -> Iterator[kopf.Memo]:
    cluster.kubectl("apply", "-f", "manifests/namespace.yaml")
    config = OperatorConfig(namespace=OPERATOR_NS)
    events = EventPoster(kube)
    found = kopf.Memo(config=config)
    engine = Engine(kube=kube, config=config, actions=registry(), emit=events)
    found[handlers.SERVICES] = handlers.Services(
        config=config, engine=engine,
        # The report handlers record through intake; no worker runs here.
        controller=Controller(engine, PlaybookReadiness(kube=kube, emit=partial(post_event, kube)),
                              elector=None),
        intake=Intake(kube, config), events=events, trivy=TrivyThresholds())
    yield found
    events.close()


def sample_for(fixture: str, namespace: str, replicaset: client.V1ReplicaSet) -> dict[str, Any]:
    """The documented sample, about this namespace's ReplicaSet, as Trivy would write it."""
    report: dict[str, Any] = yaml.safe_load((FIXTURES / "payloads" / fixture).read_text())
    name = replicaset.metadata.name
    labels = {**report["metadata"]["labels"], "trivy-operator.resource.name": name,
              "trivy-operator.resource.namespace": namespace}
    report["metadata"] = {
        "name": f"replicaset-{name}", "namespace": namespace, "labels": labels,
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name,
                             "uid": replicaset.metadata.uid, "controller": True}]}
    return report


@pytest.mark.usefixtures("trivy_crds")
@pytest.mark.parametrize("plural", list(KINDS))
def test_a_sample_report_opens_one_incident_and_its_recreation_none(
    plural: str, memo: kopf.Memo, make_app: Callable[..., list[Any]],
    custom: client.CustomObjectsApi, apps: client.AppsV1Api, namespace: str,
) -> None:
    fixture, handler, alert_name = KINDS[plural]
    make_app("web", 1)
    (replicaset,) = apps.list_namespaced_replica_set(namespace, label_selector="app=web").items
    report = sample_for(fixture, namespace, replicaset)
    where = (TRIVY_GROUP, TRIVY_VERSION, namespace, plural)

    def apply_and_handle() -> None:
        created = custom.create_namespaced_custom_object(*where, report)
        stored = custom.get_namespaced_custom_object(*where, created["metadata"]["name"])
        handler(type="ADDED", body=stored, memo=memo, logger=LOG)

    def listed() -> list[dict[str, Any]]:
        return custom.list_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, namespace, "securityincidents")["items"]

    apply_and_handle()
    (incident,) = listed()
    assert incident["spec"]["source"] == "trivy"
    assert incident["spec"]["alertName"] == alert_name
    assert incident["spec"]["target"] == {"kind": "Deployment", "namespace": namespace,
                                          "name": "web"}
    assert "*****" not in str(incident)  # the sample's masked values stay out too

    # Trivy re-creates reports on a TTL: a new object (new uid), a new scan time, the
    # same findings.
    custom.delete_namespaced_custom_object(*where, report["metadata"]["name"])
    wait_for(lambda: not custom.list_namespaced_custom_object(*where)["items"],
             timeout=30, what="the report to be gone")
    report["report"]["updateTimestamp"] = "2026-11-25T10:00:00Z"
    apply_and_handle()
    (again,) = listed()
    assert again["metadata"]["name"] == incident["metadata"]["name"]
    assert again["status"]["signalCount"] == 2


def ready_playbook(name: str) -> PlaybookCandidate:
    body = yaml.safe_load((REPO / "playbooks" / f"{name}.yaml").read_text())
    return PlaybookCandidate(body["metadata"]["namespace"], body["metadata"]["name"],
                             ResponsePlaybookSpec.model_validate(body["spec"]))


@pytest.mark.usefixtures("trivy_crds")
def test_the_ready_playbook_answers_an_exposed_secret_until_it_is_resolved(
    memo: kopf.Memo, make_app: Callable[..., list[Any]], custom: client.CustomObjectsApi,
    apps: client.AppsV1Api, api_client: client.ApiClient, namespace: str,
) -> None:
    fixture, handler, _ = KINDS["exposedsecretreports"]
    make_app("web", 2)
    (replicaset,) = apps.list_namespaced_replica_set(namespace, label_selector="app=web").items
    where = (TRIVY_GROUP, TRIVY_VERSION, namespace, "exposedsecretreports")
    created = custom.create_namespaced_custom_object(
        *where, sample_for(fixture, namespace, replicaset))
    handler(type="ADDED", body=custom.get_namespaced_custom_object(
        *where, created["metadata"]["name"]), memo=memo, logger=LOG)
    (incident,) = custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, "securityincidents")["items"]
    name = incident["metadata"]["name"]
    engine = handlers.services(memo).engine
    playbooks = [ready_playbook("exposed-secret"), ready_playbook("audit-only")]

    engine.reconcile(namespace, name, playbooks)

    status = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "securityincidents", name)["status"]
    assert status["playbook"]["name"] == "exposed-secret"
    assert status["phase"] == "Contained"
    # Evidence first (kwok's pods have no logs to read: that is said, and skipped).
    assert [(a["step"], a["state"]) for a in status["actions"]] == [
        ("evidence", "Applied"), ("isolate", "Applied"), ("rotate-credential", "Applied")]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Isolated"] == "True"
    policies = client.NetworkingV1Api(api_client).list_namespaced_network_policy(namespace).items
    assert len(policies) == 1
    deployment = apps.read_namespaced_deployment("web", namespace)
    assert deployment.metadata.labels["security.firebreak.dev/rotate-credential"] == "true"

    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "securityincidents", name,
        {"spec": {"resolution": {"reason": "credential rotated, image rebuilt"}}})
    engine.reconcile(namespace, name, playbooks)

    status = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "securityincidents", name)["status"]
    assert status["phase"] == "Resolved"
    assert client.NetworkingV1Api(api_client).list_namespaced_network_policy(namespace).items == []
    deployment = apps.read_namespaced_deployment("web", namespace)
    assert "security.firebreak.dev/rotate-credential" not in (deployment.metadata.labels or {})
