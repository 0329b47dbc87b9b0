"""The snapshot action against a real API server: the evidence bundle, its limits, what
it records as skipped, and VolumeSnapshots when (and only when) the API is served.

The incident lives in the test's namespace; its evidence goes to the operator's
namespace (here a second, fresh one), never beside the compromised workload."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from firebreak.actions.base import ActionContext, ActionRefused
from firebreak.actions.snapshot import Snapshot
from firebreak.config import OperatorConfig
from firebreak.kube import Kube
from tests.controlplane import LocalCluster
from tests.helpers import deployment, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def evidence_ns(core: client.CoreV1Api, cluster: LocalCluster) -> Iterator[str]:
    """The operator's namespace for this test: where the evidence goes."""
    name = f"op-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def make_context(make_context: Callable[..., ActionContext], evidence_ns: str
                 ) -> Callable[..., ActionContext]:
    def make(*args: Any, config: OperatorConfig | None = None, **kwargs: Any) -> ActionContext:
        return make_context(*args, config=config or OperatorConfig(namespace=evidence_ns),
                            **kwargs)

    return make

EVIDENCE = "firebreak.dev/evidence=true"
NOT_SERVED = "skipped: snapshot.storage.k8s.io/v1 is not served"
VOLUME_SNAPSHOT_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: volumesnapshots.snapshot.storage.k8s.io
  annotations:
    # *.k8s.io groups are protected; the upstream CRD carries this approval.
    api-approved.kubernetes.io: https://github.com/kubernetes-csi/external-snapshotter/pull/419
spec:
  group: snapshot.storage.k8s.io
  scope: Namespaced
  names: {plural: volumesnapshots, singular: volumesnapshot, kind: VolumeSnapshot,
          listKind: VolumeSnapshotList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


def _secret_files(secret: client.V1Secret) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def _index(files: dict[str, str]) -> dict[str, Any]:
    index: dict[str, Any] = yaml.safe_load(files["index.yaml"])
    return index


def _wait_for_events(core: client.CoreV1Api, namespace: str, kind: str) -> None:
    wait_for(lambda: core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind={kind}").items,
        timeout=30, what=f"an Event about a {kind}")


def _pvc_app(core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str) -> None:
    """A Deployment mounting a PVC. Nothing binds the claim here, so its pod stays
    Pending: enough for a snapshot, which only reads the pod's volumes."""
    core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="data"),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}))))
    apps.create_namespaced_deployment(namespace, deployment(
        "db", 1, volumes=[client.V1Volume(
            name="data",
            persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                claim_name="data"))]))
    wait_for(lambda: core.list_namespaced_pod(namespace, label_selector="app=db").items,
             timeout=60, what="the pod of db")


@pytest.fixture
def volume_snapshots_served(cluster: LocalCluster, kube: Kube) -> Iterator[None]:
    cluster.kubectl("apply", "-f", "-", input=VOLUME_SNAPSHOT_CRD)
    try:
        wait_for(lambda: kube.served("snapshot.storage.k8s.io", "v1"), timeout=60,
                 what="snapshot.storage.k8s.io/v1 to be served")
        yield
    finally:
        cluster.kubectl("delete", "crd", "volumesnapshots.snapshot.storage.k8s.io",
                        "--ignore-not-found", "--wait=true")
        wait_for(lambda: not kube.served("snapshot.storage.k8s.io", "v1"), timeout=60,
                 what="snapshot.storage.k8s.io/v1 to be gone")


def test_snapshot_of_a_deployment_stores_objects_events_and_skipped_logs(
    make_context: Callable[..., ActionContext], make_app: Callable[..., list[client.V1Pod]],
    core: client.CoreV1Api, namespace: str, evidence_ns: str
) -> None:
    pods = make_app("web", 2)
    _wait_for_events(core, namespace, "Deployment")
    action, ctx = Snapshot(), make_context("Deployment", "web", step="evidence")
    params = action.parse({"tailLines": 50})

    prepared = action.prepare(ctx, params)

    kinds = sorted((o.kind, o.name) for o in prepared.objects)
    replicaset = pods[0].metadata.owner_references[0].name
    assert kinds == sorted([("Deployment", "web"), ("ReplicaSet", replicaset),
                            *(("Pod", p.metadata.name) for p in pods)])
    name = f"firebreak-evidence-{namespace}-incident-1-evidence-0"
    assert prepared.record.to_api()["storage"] == {"kind": "Secret", "namespace": evidence_ns,
                                                   "prefix": name[:-2], "index": name}
    assert not core.list_namespaced_secret(evidence_ns, label_selector=EVIDENCE).items
    assert not core.list_namespaced_secret(namespace, label_selector=EVIDENCE).items

    applied = action.apply(ctx, params, prepared.record)

    assert applied.record is None
    (secret,) = core.list_namespaced_secret(evidence_ns, label_selector=EVIDENCE).items
    assert secret.metadata.name == name
    assert secret.immutable is True
    assert secret.metadata.labels == {"app.kubernetes.io/managed-by": "firebreak",
                                      "firebreak.dev/incident": "incident-1",
                                      "firebreak.dev/incident-namespace": namespace,
                                      "firebreak.dev/evidence": "true"}
    files = _secret_files(secret)
    index = _index(files)
    assert index["summary"] == applied.message
    assert index["storage"] == {"kind": "Secret", "namespace": evidence_ns, "objects": [name]}
    assert not core.list_namespaced_secret(namespace, label_selector=EVIDENCE).items
    assert {f["key"] for f in index["files"]} | {"index.yaml"} == set(files)
    deployment_yaml = yaml.safe_load(files["deployment_web.yaml"])
    assert deployment_yaml["kind"] == "Deployment"
    for pod in pods:
        stored = yaml.safe_load(files[f"pod_{pod.metadata.name}.yaml"])
        assert stored["metadata"]["uid"] == pod.metadata.uid
        assert "managedFields" not in stored["metadata"]
    events = yaml.safe_load(files["events_deployment_web.yaml"])
    assert events and all(e["involvedObject"]["name"] == "web" for e in events)

    # The fake kubelets serve no logs: each one is recorded as skipped, with the reason.
    log_skips = [s for s in index["skipped"] if s["what"].startswith("log of container app")]
    assert len(log_skips) == 2 and all(s["reason"] for s in log_skips)
    total = sum(len(yaml.safe_load(files[f["key"]])) for f in index["files"]
                if f["key"].startswith("events_"))
    assert applied.message.startswith(f"stored 4 objects, {total} events, ")
    assert f"0 logs (2 skipped: {log_skips[0]['reason'][:20]}" in applied.message
    assert applied.message.endswith(f"in Secret {name}")

    again = action.apply(ctx, params, prepared.record)

    assert again.message == applied.message
    (same,) = core.list_namespaced_secret(evidence_ns, label_selector=EVIDENCE).items
    assert same.metadata.resource_version == secret.metadata.resource_version
    assert same.metadata.uid == secret.metadata.uid
    with pytest.raises(ActionRefused, match="snapshot cannot be reverted"):
        action.revert(ctx, prepared.record)


def test_snapshot_of_a_pod_includes_its_owner_chain(
    make_context: Callable[..., ActionContext], make_app: Callable[..., list[client.V1Pod]],
    core: client.CoreV1Api, namespace: str, evidence_ns: str
) -> None:
    (pod,) = make_app("web", 1)
    action, ctx = Snapshot(), make_context("Pod", pod.metadata.name)
    params = action.parse({"storage": "configMap"})

    prepared = action.prepare(ctx, params)

    assert [o.kind for o in prepared.objects] == ["Pod", "ReplicaSet", "Deployment"]
    applied = action.apply(ctx, params, prepared.record)
    (stored,) = core.list_namespaced_config_map(evidence_ns, label_selector=EVIDENCE).items
    assert stored.metadata.name == f"firebreak-evidence-{namespace}-incident-1-step-0"
    assert f"pod_{pod.metadata.name}.yaml" in stored.data
    assert applied.message.startswith("stored 3 objects, ")
    assert f"in ConfigMap firebreak-evidence-{namespace}-incident-1-step-0" in applied.message


def test_a_large_bundle_is_split_and_truncated_to_the_size_limit(
    make_context: Callable[..., ActionContext], core: client.CoreV1Api,
    apps: client.AppsV1Api, namespace: str, evidence_ns: str
) -> None:
    limit = 4096
    big = deployment("big", 1)
    big.spec.template.metadata.annotations = {"example.com/padding": "x" * 6000}
    apps.create_namespaced_deployment(namespace, big)
    wait_for(lambda: core.list_namespaced_pod(namespace, label_selector="app=big").items,
             timeout=60, what="the pod of big")
    config = OperatorConfig(namespace=evidence_ns, snapshot_max_bytes=limit)
    action, ctx = Snapshot(), make_context("Deployment", "big", config=config)
    params = action.parse({"storage": "configMap"})
    prepared = action.prepare(ctx, params)

    applied = action.apply(ctx, params, prepared.record)

    parts = core.list_namespaced_config_map(evidence_ns, label_selector=EVIDENCE).items
    names = sorted(p.metadata.name for p in parts)
    assert len(parts) > 1
    assert names == [f"firebreak-evidence-{namespace}-incident-1-step-{n}" for n in range(len(parts))]
    for part in parts:
        assert sum(len(k.encode()) + len(v.encode()) for k, v in part.data.items()) <= limit
    by_name = {p.metadata.name: p.data for p in parts}
    index = yaml.safe_load(by_name[names[0]]["index.yaml"])
    assert index["storage"]["objects"] == names
    for entry in index["files"]:
        assert entry["key"] in by_name[entry["in"]]
    truncated = {e["key"]: e["truncated"] for e in index["files"] if "truncated" in e}
    assert "deployment_big.yaml" in truncated
    assert "kept the first" in truncated["deployment_big.yaml"]
    assert applied.message.endswith(f"in ConfigMap {names[0]} .. {names[-1]}")

    versions = {p.metadata.name: p.metadata.resource_version for p in parts}
    action.apply(ctx, params, prepared.record)
    after = core.list_namespaced_config_map(evidence_ns, label_selector=EVIDENCE).items
    assert {p.metadata.name: p.metadata.resource_version for p in after} == versions


def test_volume_snapshots_are_skipped_when_the_api_is_not_served(
    make_context: Callable[..., ActionContext], core: client.CoreV1Api,
    apps: client.AppsV1Api, kube: Kube, namespace: str, evidence_ns: str
) -> None:
    assert not kube.served("snapshot.storage.k8s.io", "v1"), "a test left the CRD installed"
    _pvc_app(core, apps, namespace)
    action, ctx = Snapshot(), make_context("Deployment", "db")
    params = action.parse({})

    prepared = action.prepare(ctx, params)

    assert prepared.record.to_api()["volumeSnapshots"] == [
        {"namespace": namespace, "claim": "data", "name": "firebreak-incident-1-data"}]
    assert prepared.warnings == [
        "1 PersistentVolumeClaim(s) will not be snapshotted: snapshot.storage.k8s.io/v1 "
        "is not served"]
    applied = action.apply(ctx, params, prepared.record)
    assert applied.message.endswith(f"; 0 VolumeSnapshots (1 {NOT_SERVED})")
    assert "0 logs (1 skipped: the pod is not scheduled to a node)" in applied.message
    (secret,) = core.list_namespaced_secret(evidence_ns, label_selector=EVIDENCE).items
    index = _index(_secret_files(secret))
    assert index["volumeSnapshots"] == [{
        "namespace": namespace, "name": "firebreak-incident-1-data",
        "persistentVolumeClaim": "data", "result": NOT_SERVED}]


def test_volume_snapshot_is_created_once_when_the_api_is_served(
    volume_snapshots_served: None, make_context: Callable[..., ActionContext],
    core: client.CoreV1Api, apps: client.AppsV1Api, api_client: client.ApiClient,
    namespace: str, evidence_ns: str
) -> None:
    custom = client.CustomObjectsApi(api_client)

    def snapshots() -> list[dict[str, Any]]:
        listed = custom.list_namespaced_custom_object(
            "snapshot.storage.k8s.io", "v1", namespace, "volumesnapshots")
        items: list[dict[str, Any]] = listed["items"]
        return items

    _pvc_app(core, apps, namespace)
    action, ctx = Snapshot(), make_context("Deployment", "db")
    params = action.parse({"volumeSnapshotClassName": "csi-snapclass"})
    prepared = action.prepare(ctx, params)
    assert prepared.warnings == []

    applied = action.apply(ctx, params, prepared.record)

    assert applied.message.endswith("; 1 VolumeSnapshot")
    (snapshot,) = snapshots()
    assert snapshot["metadata"]["name"] == "firebreak-incident-1-data"
    assert snapshot["metadata"]["labels"]["firebreak.dev/evidence"] == "true"
    assert snapshot["spec"] == {"source": {"persistentVolumeClaimName": "data"},
                                "volumeSnapshotClassName": "csi-snapclass"}

    # Applying again after the bundle was stored changes nothing ...
    action.apply(ctx, params, prepared.record)
    assert [s["metadata"]["resourceVersion"] for s in snapshots()] == \
        [snapshot["metadata"]["resourceVersion"]]
    # ... and neither does one after a crash between the VolumeSnapshot and the bundle.
    (secret,) = core.list_namespaced_secret(evidence_ns, label_selector=EVIDENCE).items
    core.delete_namespaced_secret(secret.metadata.name, evidence_ns)
    wait_for(lambda: not core.list_namespaced_secret(evidence_ns, label_selector=EVIDENCE).items,
             what="the evidence Secret to be deleted")
    action.apply(ctx, params, prepared.record)
    assert [s["metadata"]["resourceVersion"] for s in snapshots()] == \
        [snapshot["metadata"]["resourceVersion"]]
    (rewritten,) = core.list_namespaced_secret(evidence_ns, label_selector=EVIDENCE).items
    index = _index(_secret_files(rewritten))
    assert index["volumeSnapshots"][0]["result"] == "already existed"


def test_snapshot_of_a_node_stores_the_node(
    make_context: Callable[..., ActionContext], core: client.CoreV1Api, namespace: str, evidence_ns: str
) -> None:
    name = f"snap-{namespace}"
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
    try:
        action, ctx = Snapshot(), make_context("Node", name)
        params = action.parse({})
        prepared = action.prepare(ctx, params)
        assert [(o.kind, o.namespace, o.name) for o in prepared.objects] == [("Node", None, name)]

        applied = action.apply(ctx, params, prepared.record)

        (secret,) = core.list_namespaced_secret(evidence_ns, label_selector=EVIDENCE).items
        files = _secret_files(secret)
        assert yaml.safe_load(files[f"node_{name}.yaml"])["metadata"]["name"] == name
        assert applied.message.startswith("stored 1 object, ")
        assert f", 0 logs in Secret firebreak-evidence-{namespace}-incident-1-step-0" in applied.message
    finally:
        core.delete_node(name)


def test_snapshot_of_a_missing_target_is_refused(
    make_context: Callable[..., ActionContext], namespace: str
) -> None:
    action = Snapshot()
    with pytest.raises(ActionRefused, match=f"Pod gone in namespace {namespace} does not exist"):
        action.prepare(make_context("Pod", "gone"), action.parse({}))


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="storage"):
        Snapshot().parse({"storage": "s3"})
    with pytest.raises(ValueError, match="tailLines"):
        Snapshot().parse({"tailLines": 0})
