"""isolateNetwork on a real API server: apply, re-apply, revert, detach, warnings."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kubernetes import client

from firebreak.actions.base import ActionContext
from firebreak.actions.network import (
    QUARANTINE_PREFIX,
    IsolateNetwork,
    IsolateNetworkParams,
    quarantine_label,
)
from firebreak.actions.workloads import DETACHED_FROM, top_workload
from tests.helpers import running_pods, wait_for

pytestmark = pytest.mark.cluster
ACTION = IsolateNetwork()


def labels_of(core: client.CoreV1Api, namespace: str, app: str) -> dict[str, dict[str, str]]:
    return {p.metadata.name: p.metadata.labels
            for p in core.list_namespaced_pod(namespace, label_selector=f"app={app}").items}


def test_quarantines_only_the_offending_pod_and_reverts(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    core: client.CoreV1Api, api_client: client.ApiClient, namespace: str,
) -> None:
    pods = make_app("web", 3)
    victim = pods[0].metadata.name
    ctx = make_context("Pod", victim)
    params = ACTION.parse({"forensicsNamespace": "forensics"})

    prepared = ACTION.prepare(ctx, params)
    assert [o.name for o in prepared.objects] == [f"firebreak-quarantine-{ctx.incident.key}", victim]
    ACTION.apply(ctx, params, prepared.record)

    networking = client.NetworkingV1Api(api_client)
    policy = networking.read_namespaced_network_policy(prepared.record.policy, namespace)
    label = quarantine_label(ctx.incident.key)
    assert policy.spec.pod_selector.match_labels == {label: "true"}
    assert policy.spec.policy_types == ["Ingress", "Egress"]
    assert policy.spec.ingress[0]._from[0].namespace_selector.match_labels == {
        "kubernetes.io/metadata.name": "forensics"}
    dns = policy.spec.egress[0]
    assert {(p.protocol, p.port) for p in dns.ports} == {("UDP", 53), ("TCP", 53)}
    labels = labels_of(core, namespace, "web")
    assert labels[victim][label] == "true"
    assert all(not any(key.startswith(QUARANTINE_PREFIX) for key in v)
               for k, v in labels.items() if k != victim)

    # Re-apply changes nothing: same policy, same pod versions.
    policy_version = policy.metadata.resource_version
    pod_version = core.read_namespaced_pod(victim, namespace).metadata.resource_version
    ACTION.apply(ctx, params, prepared.record)
    assert networking.read_namespaced_network_policy(
        prepared.record.policy, namespace).metadata.resource_version == policy_version
    assert core.read_namespaced_pod(victim, namespace).metadata.resource_version == pod_version
    assert len(networking.list_namespaced_network_policy(namespace).items) == 1

    message = ACTION.revert(ctx, prepared.record)
    assert victim in message
    assert networking.list_namespaced_network_policy(namespace).items == []
    assert label not in labels_of(core, namespace, "web")[victim]
    ACTION.revert(ctx, prepared.record)  # idempotent


def test_workload_scope_quarantines_every_replica(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    core: client.CoreV1Api, namespace: str,
) -> None:
    make_app("api", 2)
    ctx = make_context("Deployment", "api")
    params = ACTION.parse({"scope": "workload", "allowDNS": False})
    prepared = ACTION.prepare(ctx, params)
    ACTION.apply(ctx, params, prepared.record)
    assert all(v.get(quarantine_label(ctx.incident.key)) == "true"
               for v in labels_of(core, namespace, "api").values())


def test_workload_target_needs_workload_scope(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
) -> None:
    make_app("api", 1)
    from firebreak.actions.base import ActionRefused
    with pytest.raises(ActionRefused, match="scope 'workload'"):
        ACTION.prepare(make_context("Deployment", "api"), IsolateNetworkParams())


def test_detach_lets_the_replicaset_replace_the_pod(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    core: client.CoreV1Api, namespace: str,
) -> None:
    pods = make_app("shop", 2)
    victim = pods[0].metadata.name
    ctx = make_context("Pod", victim)
    params = ACTION.parse({"detach": True})
    prepared = ACTION.prepare(ctx, params)
    ACTION.apply(ctx, params, prepared.record)

    detached = core.read_namespaced_pod(victim, namespace)
    assert detached.metadata.labels["app"] == "shop-quarantined"
    assert detached.metadata.labels[quarantine_label(ctx.incident.key)] == "true"
    # Later steps still find the workload a detached pod came from.
    assert detached.metadata.annotations[DETACHED_FROM] == pods[0].metadata.owner_references[0].name
    assert top_workload(ctx.kube, ctx.target)["metadata"]["name"] == "shop"
    # The ReplicaSet lets go of it and starts a replacement; the quarantined pod stays.
    wait_for(lambda: not core.read_namespaced_pod(victim, namespace).metadata.owner_references,
             what="the ReplicaSet to release the pod")
    wait_for(lambda: len(running_pods(core, namespace, "shop")) == 2, timeout=60,
             what="a replacement pod")
    assert core.read_namespaced_pod(victim, namespace).status.phase == "Running"

    ACTION.revert(ctx, prepared.record)
    restored = core.read_namespaced_pod(victim, namespace).metadata
    assert restored.labels["app"] == "shop"
    assert quarantine_label(ctx.incident.key) not in restored.labels
    assert DETACHED_FROM not in (restored.annotations or {})
    # Adopted again, the ReplicaSet brings its count back to 2 by itself.
    wait_for(lambda: len(running_pods(core, namespace, "shop")) == 2, timeout=60,
             what="the ReplicaSet to settle back to 2 pods")


def test_warns_about_policies_that_still_allow_traffic(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    api_client: client.ApiClient, namespace: str,
) -> None:
    pods = make_app("web", 1)
    networking = client.NetworkingV1Api(api_client)
    networking.create_namespaced_network_policy(namespace, client.V1NetworkPolicy(
        metadata=client.V1ObjectMeta(name="allow-web"),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels={"app": "web"}),
            policy_types=["Ingress"],
            ingress=[client.V1NetworkPolicyIngressRule()],  # allow from anywhere
        )))
    networking.create_namespaced_network_policy(namespace, client.V1NetworkPolicy(
        metadata=client.V1ObjectMeta(name="deny-other"),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels={"app": "other"}),
            policy_types=["Ingress"], ingress=[client.V1NetworkPolicyIngressRule()])))

    prepared = ACTION.prepare(make_context("Pod", pods[0].metadata.name), IsolateNetworkParams())
    assert len(prepared.warnings) == 1
    assert "NetworkPolicy allow-web also selects" in prepared.warnings[0]
    assert "allows ingress" in prepared.warnings[0]


def test_two_incidents_on_one_pod_stay_independent(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    core: client.CoreV1Api, api_client: client.ApiClient, namespace: str,
) -> None:
    (pod,) = make_app("web", 1)
    first = make_context("Pod", pod.metadata.name, incident="first")
    second = make_context("Pod", pod.metadata.name, incident="second")
    records = []
    for ctx in (first, second):
        prepared = ACTION.prepare(ctx, IsolateNetworkParams())
        ACTION.apply(ctx, IsolateNetworkParams(), prepared.record)
        records.append(prepared.record)

    ACTION.revert(first, records[0])
    labels = core.read_namespaced_pod(pod.metadata.name, namespace).metadata.labels
    assert quarantine_label("second") in labels and quarantine_label("first") not in labels
    policies = client.NetworkingV1Api(api_client).list_namespaced_network_policy(namespace).items
    assert [p.metadata.name for p in policies] == ["firebreak-quarantine-second"]


def test_same_incident_name_in_another_namespace_is_refused_not_merged(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    namespace: str,
) -> None:
    import dataclasses

    from firebreak.actions.base import ActionRefused, IncidentRef

    (pod,) = make_app("web", 1)
    ours = make_context("Pod", pod.metadata.name, incident="miner")
    prepared = ACTION.prepare(ours, IsolateNetworkParams())
    ACTION.apply(ours, IsolateNetworkParams(), prepared.record)
    ACTION.apply(ours, IsolateNetworkParams(), prepared.record)  # our own re-apply is fine

    theirs = dataclasses.replace(ours, incident=IncidentRef("elsewhere", "miner", "uid-2"))
    with pytest.raises(ActionRefused, match="belongs to incident"):
        ACTION.apply(theirs, IsolateNetworkParams(), ACTION.prepare(theirs, IsolateNetworkParams()).record)


def test_a_pod_replaced_under_the_same_name_is_not_quarantined(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    core: client.CoreV1Api, namespace: str,
) -> None:
    (pod,) = make_app("web", 1)
    ctx = make_context("Pod", pod.metadata.name)
    prepared = ACTION.prepare(ctx, IsolateNetworkParams())
    older = prepared.record.pods[0].model_copy(  # an older pod of the same name
        update={"uid": "00000000-0000-0000-0000-000000000000"})
    applied = ACTION.apply(ctx, IsolateNetworkParams(),
                           prepared.record.model_copy(update={"pods": [older]}))
    assert f"gone before labelling: {pod.metadata.name}" in applied.message
    labels = core.read_namespaced_pod(pod.metadata.name, namespace).metadata.labels
    assert quarantine_label(ctx.incident.key) not in labels
