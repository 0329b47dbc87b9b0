"""Intake on a real API server: create once, count every delivery, never lose one."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client

from firebreak.api import Severity, Source, Target, TargetKind
from firebreak.config import OperatorConfig
from firebreak.intake import WORKLOAD_KIND_LABEL, WORKLOAD_NAME_LABEL, Intake
from firebreak.kube import Kube
from firebreak.sources.signal import Signal, SignalStatus, incident_name
from tests.helpers import GROUP, OPERATOR_NS, VERSION, create_playbook

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]


def signal(namespace: str, pod: str = "web-1", fingerprint: str = "fp-1", **changes: Any) -> Signal:
    base = Signal(source=Source.alertmanager, fingerprint=fingerprint, severity=Severity.critical,
                  title="Crypto miner", alert_name="CryptoMiner",
                  target=Target(kind=TargetKind.pod, namespace=namespace, name=pod),
                  labels={"alertname": "CryptoMiner", "namespace": namespace, "pod": pod})
    return base.model_copy(update=changes)


@pytest.fixture
def intake(kube: Kube, cluster: Any) -> Intake:
    cluster.kubectl("apply", "-f", "manifests/namespace.yaml")
    return Intake(kube, OperatorConfig(namespace=OPERATOR_NS))


def read(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents",
                                               name)  # type: ignore[no-any-return]


def incidents(custom: client.CustomObjectsApi, namespace: str) -> list[dict[str, Any]]:
    return custom.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                "securityincidents")["items"]  # type: ignore[no-any-return]


def test_first_delivery_creates_then_counts(intake: Intake, custom: client.CustomObjectsApi,
                                            namespace: str) -> None:
    first = intake.record(signal(namespace))
    assert (first.namespace, first.outcome) == (namespace, "created")
    assert first.name == incident_name(signal(namespace))
    second = intake.record(signal(namespace))
    assert (second.name, second.outcome) == (first.name, "updated")

    stored = read(custom, namespace, first.name)
    assert stored["spec"]["target"] == {"kind": "Pod", "namespace": namespace, "name": "web-1"}
    assert stored["spec"]["fingerprint"] == "fp-1"
    assert stored["status"]["signalCount"] == 2
    assert stored["status"]["firstSeen"] <= stored["status"]["lastSeen"]
    assert len(incidents(custom, namespace)) == 1


def test_fifty_concurrent_deliveries_make_one_incident_counted_fifty_times(
    intake: Intake, kube: Kube, custom: client.CustomObjectsApi, namespace: str
) -> None:
    # Two intakes stand for two operator replicas receiving the same alert.
    other = Intake(kube, OperatorConfig(namespace=OPERATOR_NS))
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda i: (intake if i % 2 else other).record(signal(namespace)),
                                range(50)))
    assert {r.name for r in results} == {results[0].name}
    assert sorted(r.outcome for r in results).count("created") == 1
    assert len(incidents(custom, namespace)) == 1
    assert read(custom, namespace, results[0].name)["status"]["signalCount"] == 50


def test_firing_after_resolution_opens_a_successor(intake: Intake, custom: client.CustomObjectsApi,
                                                   namespace: str) -> None:
    first = intake.record(signal(namespace))
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents",
                                          first.name, {"spec": {"resolution": {"reason": "done"}}})
    again = intake.record(signal(namespace))
    assert (again.name, again.outcome) == (f"{first.name}-2", "created")
    assert intake.record(signal(namespace)).name == again.name


def test_resolved_signal_never_creates_and_releases_only_when_asked(
    intake: Intake, custom: client.CustomObjectsApi, namespace: str
) -> None:
    resolved = signal(namespace, status=SignalStatus.resolved)
    assert intake.record(resolved).outcome == "ignored"
    assert incidents(custom, namespace) == []

    created = intake.record(signal(namespace))
    # Without a playbook (or with release: manual) a resolved signal changes nothing.
    assert intake.record(resolved).outcome == "ignored"
    create_playbook(custom, "auto-release", {"release": "onSignalResolved",
                                             "steps": [{"name": "s", "action": "snapshot"}]},
                    namespace=namespace)
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "securityincidents", created.name,
        {"status": {"playbook": {"name": "auto-release", "namespace": namespace}}})
    assert intake.record(resolved).outcome == "released"
    resolution = read(custom, namespace, created.name)["spec"]["resolution"]
    assert resolution == {"reason": "the signal resolved", "by": "alertmanager"}


def test_pod_is_related_to_its_deployment(intake: Intake, make_app: Callable[..., list[Any]],
                                          custom: client.CustomObjectsApi, namespace: str) -> None:
    (pod,) = make_app("web", 1)
    recorded = intake.record(signal(namespace, pod=pod.metadata.name, fingerprint="fp-pod"))
    spec = read(custom, namespace, recorded.name)["spec"]
    assert spec["target"]["kind"] == "Pod"  # quarantine stays pod-precise
    assert spec["labels"][WORKLOAD_KIND_LABEL] == "Deployment"
    assert spec["labels"][WORKLOAD_NAME_LABEL] == "web"

    rs = pod.metadata.owner_references[0].name
    trivy = signal(namespace, fingerprint="fp-rs", source=Source.trivy,
                   target=Target(kind=TargetKind.replica_set, namespace=namespace, name=rs))
    spec = read(custom, namespace, intake.record(trivy).name)["spec"]
    assert spec["target"] == {"kind": "Deployment", "namespace": namespace, "name": "web"}


def test_protected_and_targetless_signals_go_to_the_operator_namespace(
    intake: Intake, custom: client.CustomObjectsApi
) -> None:
    system = signal("kube-system", pod="etcd-0", fingerprint="fp-system")
    nowhere = signal("x", fingerprint="fp-kubelet", target=None, title="KubeletDown")
    for s in (system, nowhere):
        recorded = intake.record(s)
        assert recorded.namespace == OPERATOR_NS
        custom.delete_namespaced_custom_object(GROUP, VERSION, OPERATOR_NS, "securityincidents",
                                               recorded.name)
