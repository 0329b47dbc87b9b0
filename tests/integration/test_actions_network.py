"""isolateNetwork on a real API server: apply, re-apply, revert, detach, the exclusion
from other policies, and holding the quarantine against later changes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from kubernetes import client

from firebreak.actions.base import ActionContext, ActionRefused
from firebreak.actions.network import (
    QUARANTINE_PREFIX,
    IsolateNetwork,
    IsolateNetworkParams,
    quarantine_label,
)
from firebreak.actions.workloads import DETACHED_FROM, top_workload
from firebreak.views import PolicyView
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


def _policy(networking: client.NetworkingV1Api, namespace: str, name: str,
            spec: dict[str, Any]) -> None:
    networking.create_namespaced_network_policy(namespace, {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name}, "spec": spec})


def _specs(networking: client.NetworkingV1Api, namespace: str) -> dict[str, Any]:
    return {p["metadata"]["name"]: (p["metadata"]["resourceVersion"], p["spec"])
            for p in networking.list_namespaced_network_policy(
                namespace, _preload_content=False).json()["items"]}


ALLOW_ALL = {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
             "ingress": [{}]}
DNS_ONLY = {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
    "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}


def test_policies_that_would_open_the_pod_are_excluded_and_revert_restores_them_exactly(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    api_client: client.ApiClient, namespace: str,
) -> None:
    (pod, bystander) = make_app("web", 2)
    networking = client.NetworkingV1Api(api_client)
    _policy(networking, namespace, "allow-web", ALLOW_ALL)
    _policy(networking, namespace, "scrape", {
        "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 9090}]}]})
    _policy(networking, namespace, "dns-only", DNS_ONLY)
    _policy(networking, namespace, "deny-other", {"podSelector": {"matchLabels": {"app": "other"}},
                                                  "policyTypes": ["Ingress"], "ingress": [{}]})
    before = _specs(networking, namespace)
    ctx = make_context("Pod", pod.metadata.name)

    prepared = ACTION.prepare(ctx, IsolateNetworkParams())
    assert "exclude them from NetworkPolicies allow-web, scrape" in prepared.message
    assert _specs(networking, namespace) == before, "prepare writes nothing"
    applied = ACTION.apply(ctx, IsolateNetworkParams(), prepared.record)

    assert applied.verdict is not None and applied.verdict.holds, applied.verdict
    after = _specs(networking, namespace)
    term = {"key": quarantine_label(ctx.incident.key), "operator": "DoesNotExist"}
    assert after["allow-web"][1]["podSelector"] == {"matchLabels": {"app": "web"},
                                                    "matchExpressions": [term]}
    assert after["scrape"][1]["podSelector"]["matchExpressions"][-1] == term
    # A DNS-only rule allows nothing the quarantine does not; an unrelated policy is
    # not ours to touch: both are left exactly as they were.
    assert after["dns-only"] == before["dns-only"] and after["deny-other"] == before["deny-other"]
    assert [e.name for e in applied.record.excluded or []] == ["allow-web", "scrape"]
    # The bystander replica is still selected by allow-web: only the quarantined pod left it.
    assert quarantine_label(ctx.incident.key) not in (bystander.metadata.labels or {})

    again = ACTION.apply(ctx, IsolateNetworkParams(), applied.record)
    assert _specs(networking, namespace) == after, "re-applying changes nothing"
    assert again.verdict is not None and again.verdict.holds

    message = ACTION.revert(ctx, again.record)
    restored = _specs(networking, namespace)
    assert {n: spec for n, (_, spec) in restored.items()} == {
        n: spec for n, (_, spec) in before.items()}
    assert "removed the exclusion from NetworkPolicies allow-web, scrape" in message


def test_revert_removes_only_the_exclusion_from_a_policy_changed_since(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    api_client: client.ApiClient, namespace: str,
) -> None:
    (pod,) = make_app("web", 1)
    networking = client.NetworkingV1Api(api_client)
    _policy(networking, namespace, "allow-web", ALLOW_ALL)
    ctx = make_context("Pod", pod.metadata.name)
    applied = ACTION.apply(ctx, IsolateNetworkParams(), ACTION.prepare(ctx, IsolateNetworkParams()).record)
    networking.patch_namespaced_network_policy("allow-web", namespace, {
        "spec": {"podSelector": {"matchLabels": {"tier": "front"}}}})

    message = ACTION.revert(ctx, applied.record)

    (_, spec) = _specs(networking, namespace)["allow-web"]
    assert spec["podSelector"] == {"matchLabels": {"app": "web", "tier": "front"}}
    assert "allow-web changed by others since" in message


def test_hold_excludes_a_late_allow_policy_and_relabels_a_pod(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    core: client.CoreV1Api, api_client: client.ApiClient, namespace: str,
) -> None:
    (pod,) = make_app("web", 1)
    networking = client.NetworkingV1Api(api_client)
    ctx = make_context("Pod", pod.metadata.name)
    params = IsolateNetworkParams()
    applied = ACTION.apply(ctx, params, ACTION.prepare(ctx, params).record)
    quiet = ACTION.hold(ctx, params, applied.record)
    assert quiet.changes == [] and quiet.verdict.holds

    _policy(networking, namespace, "late-allow", {"podSelector": {}, "policyTypes": ["Egress"],
                                                   "egress": [{}]})
    core.patch_namespaced_pod(pod.metadata.name, namespace, {
        "metadata": {"labels": {quarantine_label(ctx.incident.key): None}}})

    held = ACTION.hold(ctx, params, applied.record)

    assert held.changes == [
        f"excluded the quarantined pods from NetworkPolicy {namespace}/late-allow",
        f"put the quarantine label back on {pod.metadata.name}"]
    assert held.verdict.holds, held.verdict
    labels = core.read_namespaced_pod(pod.metadata.name, namespace).metadata.labels
    assert labels[quarantine_label(ctx.incident.key)] == "true"
    networking.delete_namespaced_network_policy(f"firebreak-quarantine-{ctx.incident.key}",
                                                namespace)
    restored = ACTION.hold(ctx, params, held.record)
    assert restored.changes[0].startswith("restored NetworkPolicy") and restored.verdict.holds


def test_a_policy_that_cannot_be_excluded_defeats_the_quarantine(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    api_client: client.ApiClient, namespace: str,
) -> None:
    (pod,) = make_app("web", 1)
    ctx = make_context("Pod", pod.metadata.name)
    # Made to look like a quarantine: selects the quarantine label, and allows everything.
    _policy(client.NetworkingV1Api(api_client), namespace, "firebreak-quarantine-forged", {
        "podSelector": {"matchLabels": {quarantine_label(ctx.incident.key): "true"}},
        "policyTypes": ["Ingress"], "ingress": [{}]})

    applied = ACTION.apply(ctx, IsolateNetworkParams(),
                           ACTION.prepare(ctx, IsolateNetworkParams()).record)

    assert applied.verdict is not None and not applied.verdict.holds
    assert "ingress from anywhere on every port (NetworkPolicy firebreak-quarantine-forged)" \
        in applied.verdict.message


def test_host_network_pods_are_refused(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
) -> None:
    (pod,) = make_app("web", 1, host_network=True)
    with pytest.raises(ActionRefused, match="cannot isolate a pod on the host's network"):
        ACTION.prepare(make_context("Pod", pod.metadata.name), IsolateNetworkParams())


def test_workload_scope_quarantines_pods_created_later(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str,
) -> None:
    make_app("web", 1)
    ctx = make_context("Deployment", "web")
    params = IsolateNetworkParams(scope="workload")
    applied = ACTION.apply(ctx, params, ACTION.prepare(ctx, params).record)
    apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 3}})
    wait_for(lambda: len(running_pods(core, namespace, "web")) == 3, timeout=60,
             what="3 running pods of web")

    held = ACTION.hold(ctx, params, applied.record)

    assert len(held.record.pods) == 3 and held.verdict.holds
    assert sum("a new pod of the workload" in c for c in held.changes) == 2
    assert all(v.get(quarantine_label(ctx.incident.key)) == "true"
               for v in labels_of(core, namespace, "web").values())


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

    from firebreak.actions.base import IncidentRef

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


def test_from_the_watchs_view_it_excludes_holds_and_catches_up_with_what_it_had_not_seen(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    api_client: client.ApiClient, namespace: str,
) -> None:
    (pod,) = make_app("web", 1)
    networking = client.NetworkingV1Api(api_client)
    _policy(networking, namespace, "allow-web", ALLOW_ALL)
    view = PolicyView()

    def deliver() -> None:  # what the operator's watch delivers: every policy as stored
        for policy in networking.list_namespaced_network_policy(
                namespace, _preload_content=False).json()["items"]:
            view.upsert(policy)

    deliver()
    view.mark_synced()
    ctx = replace(make_context("Pod", pod.metadata.name), policies=view.in_namespace)
    params = IsolateNetworkParams()
    applied = ACTION.apply(ctx, params, ACTION.prepare(ctx, params).record)
    assert applied.verdict is not None and applied.verdict.holds, applied.verdict
    assert [e.name for e in applied.record.excluded or []] == ["allow-web"]

    # The view lags: it still holds allow-web as it was before the exclusion, and its
    # quarantine policy not at all. Holding costs a refused write, and judges right.
    quiet = ACTION.hold(ctx, params, applied.record)
    assert quiet.changes == [] and quiet.verdict.holds, quiet.verdict
    # A late policy the view has not seen yet is not judged; once delivered, it is
    # excluded, as the policy watch would have asked for.
    _policy(networking, namespace, "late-allow", {"podSelector": {}, "policyTypes": ["Egress"],
                                                   "egress": [{}]})
    assert ACTION.hold(ctx, params, applied.record).changes == []
    deliver()
    held = ACTION.hold(ctx, params, applied.record)
    assert held.changes == [
        f"excluded the quarantined pods from NetworkPolicy {namespace}/late-allow"]
    assert held.verdict.holds, held.verdict
    late = networking.read_namespaced_network_policy("late-allow", namespace)
    assert late.spec.pod_selector.match_expressions[0].operator == "DoesNotExist"
