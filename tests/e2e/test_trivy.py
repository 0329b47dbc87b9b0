"""Trivy Operator's VulnerabilityReports open incidents on the workload, once.

A report owned by a Deployment's ReplicaSet opens an incident whose target is the
Deployment; deleting and re-creating the same report (Trivy does so on its TTL)
counts one more signal on the same incident instead of opening another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.controlplane import LocalCluster
from tests.e2e.conftest import OperatorProcess, incident_status, wait_phase
from tests.helpers import GROUP, VERSION, create_playbook, wait_for

pytestmark = pytest.mark.cluster
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TRIVY = ("aquasecurity.github.io", "v1alpha1", "vulnerabilityreports")


@pytest.fixture(scope="module")
def trivy_crd(cluster: LocalCluster) -> Iterator[None]:
    crd = FIXTURES / "crds" / "vulnerabilityreports.aquasecurity.github.io.yaml"
    cluster.kubectl("apply", "-f", str(crd))
    cluster.wait_established("vulnerabilityreports.aquasecurity.github.io")
    yield
    cluster.kubectl("delete", "-f", str(crd), "--wait=false")


def report_for(namespace: str, replicaset: client.V1ReplicaSet) -> dict[str, Any]:
    path = (FIXTURES / "payloads"
            / "trivy_VulnerabilityReport_replicaset-nginx-6d4cf56db6-nginx_CRITICAL_docs.yaml")
    report: dict[str, Any] = yaml.safe_load(path.read_text())
    name = replicaset.metadata.name
    report["metadata"] = {
        "name": f"replicaset-{name}-app",
        "namespace": namespace,
        "labels": {**report["metadata"]["labels"],
                   "trivy-operator.resource.name": name,
                   "trivy-operator.resource.namespace": namespace,
                   "trivy-operator.container.name": "app"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name,
                             "uid": replicaset.metadata.uid, "controller": True}],
    }
    return report


@pytest.mark.usefixtures("trivy_crd")
def test_report_opens_one_incident_on_the_deployment(
    start_operator: Callable[..., OperatorProcess], make_app: Callable[..., list[Any]],
    custom: client.CustomObjectsApi, apps: client.AppsV1Api, namespace: str,
) -> None:
    create_playbook(custom, "vulnerable", {
        "match": {"sources": ["trivy"], "severity": "critical"},
        "steps": [{"name": "mark", "action": "label",
                   "params": {"labels": {"security.firebreak.dev/vulnerable": "true"}}}]},
        namespace=namespace)
    make_app("web", 1)
    (replicaset,) = apps.list_namespaced_replica_set(namespace, label_selector="app=web").items
    op = start_operator("--webhook-address=")
    report = report_for(namespace, replicaset)
    custom.create_namespaced_custom_object(*TRIVY[:2], namespace, TRIVY[2], report)

    def listed() -> list[dict[str, Any]]:
        return custom.list_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, namespace, "securityincidents")["items"]

    (incident,) = wait_for(listed, timeout=60, what="an incident from the report")
    name = incident["metadata"]["name"]
    assert incident["spec"]["source"] == "trivy"
    assert incident["spec"]["target"] == {"kind": "Deployment", "namespace": namespace,
                                          "name": "web"}
    wait_phase(custom, namespace, name, "Contained", op)
    assert apps.read_namespaced_deployment("web", namespace).metadata.labels[
        "security.firebreak.dev/vulnerable"] == "true"

    # Trivy re-creates reports on a TTL: same workload, same findings, same incident.
    custom.delete_namespaced_custom_object(*TRIVY[:2], namespace, TRIVY[2],
                                           report["metadata"]["name"])
    custom.create_namespaced_custom_object(*TRIVY[:2], namespace, TRIVY[2], report)
    wait_for(lambda: incident_status(custom, namespace, name).get("signalCount") == 2,
             timeout=30, what="the re-created report to be counted")
    assert [i["metadata"]["name"] for i in listed()] == [name]


# --- ExposedSecretReport and ConfigAuditReport, read by the running operator ---------

REPO = Path(__file__).resolve().parents[2]
SCANNED = {
    "exposedsecretreports": ("trivy_ExposedSecretReport_replicaset-app-67b77f5965-app_docs.yaml",
                             "ExposedSecret"),
    "configauditreports": ("trivy_ConfigAuditReport_replicaset-nginx-6d4cf56db6_docs.yaml",
                           "MisconfiguredWorkload"),
}


@pytest.fixture(scope="module")
def scanner_crds(cluster: LocalCluster) -> Iterator[None]:
    paths = [FIXTURES / "crds" / f"{plural}.{TRIVY[0]}.yaml" for plural in SCANNED]
    for path in paths:
        cluster.kubectl("apply", "-f", str(path))
    cluster.wait_established(*(f"{plural}.{TRIVY[0]}" for plural in SCANNED))
    yield
    for path in paths:
        cluster.kubectl("delete", "-f", str(path), "--wait=false")


def sample_for(fixture: str, namespace: str, replicaset: client.V1ReplicaSet) -> dict[str, Any]:
    """The documented sample, about this namespace's ReplicaSet, as Trivy would write it."""
    report: dict[str, Any] = yaml.safe_load((FIXTURES / "payloads" / fixture).read_text())
    name = replicaset.metadata.name
    report["metadata"] = {
        "name": f"replicaset-{name}", "namespace": namespace,
        "labels": {**report["metadata"]["labels"], "trivy-operator.resource.name": name,
                   "trivy-operator.resource.namespace": namespace},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name,
                             "uid": replicaset.metadata.uid, "controller": True}]}
    return report


@pytest.mark.usefixtures("scanner_crds")
def test_each_sample_opens_one_incident_the_secret_is_contained_and_recreation_opens_none(
    start_operator: Callable[..., OperatorProcess], make_app: Callable[..., list[Any]],
    custom: client.CustomObjectsApi, apps: client.AppsV1Api, namespace: str,
    cluster: LocalCluster,
) -> None:
    ready = REPO / "playbooks" / "exposed-secret.yaml"
    cluster.kubectl("apply", "-f", str(REPO / "manifests" / "namespace.yaml"))
    cluster.kubectl("apply", "-f", str(ready))
    try:
        make_app("web", 1)
        (replicaset,) = apps.list_namespaced_replica_set(namespace, label_selector="app=web").items
        op = start_operator("--webhook-address=")
        reports = {plural: sample_for(fixture, namespace, replicaset)
                   for plural, (fixture, _) in SCANNED.items()}
        for plural, report in reports.items():
            custom.create_namespaced_custom_object(*TRIVY[:2], namespace, plural, report)

        def listed() -> list[dict[str, Any]]:
            return custom.list_namespaced_custom_object(  # type: ignore[no-any-return]
                GROUP, VERSION, namespace, "securityincidents")["items"]

        items = wait_for(lambda: len(listed()) == 2 and listed(), timeout=60,
                         what="one incident from each report")
        found = {i["spec"]["alertName"]: i for i in items}
        assert set(found) == {"ExposedSecret", "MisconfiguredWorkload"}
        for incident in found.values():
            assert incident["spec"]["source"] == "trivy"
            assert incident["spec"]["target"] == {"kind": "Deployment", "namespace": namespace,
                                                  "name": "web"}
        secret = found["ExposedSecret"]["metadata"]["name"]
        status = wait_phase(custom, namespace, secret, "Contained", op)
        assert status["playbook"] == {"name": "exposed-secret", "namespace": "firebreak-system"}
        assert apps.read_namespaced_deployment("web", namespace).metadata.labels[
            "security.firebreak.dev/rotate-credential"] == "true"

        # Trivy re-creates reports on a TTL: a new object and scan time, the same findings.
        for plural, report in reports.items():
            custom.delete_namespaced_custom_object(*TRIVY[:2], namespace, plural,
                                                   report["metadata"]["name"])
            report["report"]["updateTimestamp"] = "2026-11-25T10:00:00Z"
            custom.create_namespaced_custom_object(*TRIVY[:2], namespace, plural, report)
        for incident in found.values():
            name = incident["metadata"]["name"]
            wait_for(lambda name=name: incident_status(custom, namespace, name).get(
                "signalCount") == 2, timeout=30, what=f"{name} to count the re-created report")
        assert sorted(i["metadata"]["name"] for i in listed()) == sorted(
            i["metadata"]["name"] for i in items)
    finally:
        cluster.kubectl("delete", "-f", str(ready), "--wait=false")
