"""End to end: ``firebreak run`` answers an incident and undoes its work on resolve."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from firebreak.actions.network import QUARANTINE_PREFIX, quarantine_label
from tests.e2e.conftest import OPERATOR_NS, OperatorProcess, incident_status, wait_phase
from tests.helpers import GROUP, VERSION, create_incident, create_playbook, wait_for

pytestmark = pytest.mark.cluster



@pytest.fixture
def playbook(custom: client.CustomObjectsApi, namespace: str) -> Iterator[str]:
    """A playbook in the operator's namespace that answers only this test's namespace."""
    name = f"isolate-{namespace}"
    create_playbook(custom, name, {
        "match": {"namespaces": [namespace]},
        "steps": [
            # Detached, the quarantined pod is no longer the ReplicaSet's to remove
            # when the workload is scaled down: it stays for investigators.
            {"name": "isolate", "action": "isolateNetwork", "params": {"detach": True}},
            {"name": "stop", "action": "scaleDown", "params": {"replicas": 1}},
        ],
    })
    yield name
    custom.delete_namespaced_custom_object(GROUP, VERSION, OPERATOR_NS, "responseplaybooks", name)


def test_contain_then_resolve(
    start_operator: Callable[..., OperatorProcess], playbook: str,
    make_app: Callable[..., list[client.V1Pod]], custom: client.CustomObjectsApi,
    core: client.CoreV1Api, apps: client.AppsV1Api, api_client: client.ApiClient,
    namespace: str,
) -> None:
    op = start_operator()
    pods = make_app("web", 3)
    victim = pods[0].metadata.name
    create_incident(custom, namespace, "miner", {"kind": "Pod", "namespace": namespace,
                                                 "name": victim})

    status = wait_phase(custom, namespace, "miner", "Contained", op)
    networking = client.NetworkingV1Api(api_client)
    policies = networking.list_namespaced_network_policy(namespace).items
    assert [p.metadata.name for p in policies] == ["firebreak-quarantine-miner"]
    assert core.read_namespaced_pod(victim, namespace).metadata.labels[
        quarantine_label("miner")] == "true"
    assert apps.read_namespaced_deployment_scale("web", namespace).spec.replicas == 1
    assert status["playbook"] == {"name": playbook, "namespace": OPERATOR_NS}
    assert [(a["step"], a["state"]) for a in status["actions"]] == [
        ("isolate", "Applied"), ("stop", "Applied")]
    assert status["actions"][1]["revert"]["previousReplicas"] == 3
    assert status["timeToContainSeconds"] >= 0
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Triaged": "True", "Approved": "True", "Contained": "True",
                          "Isolated": "True"}
    # The playbook chosen and the steps' outcome are in the timeline (no one waited for
    # them, so they are not Events as well: tests/engine/test_incident.py).
    assert [t["reason"] for t in status["timeline"]] == [
        "PlaybookSelected", "StepApplied", "StepApplied", "StepsApplied"]

    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents", "miner",
                                          {"spec": {"resolution": {"reason": "false positive",
                                                                   "by": "alice"}}})
    status = wait_phase(custom, namespace, "miner", "Resolved", op)
    assert networking.list_namespaced_network_policy(namespace).items == []
    assert apps.read_namespaced_deployment_scale("web", namespace).spec.replicas == 3
    # Released back to its ReplicaSet, the pod is either kept (label gone) or, as one
    # too many, removed by the ReplicaSet: it is never left quarantined.
    released = core.list_namespaced_pod(namespace, field_selector=f"metadata.name={victim}").items
    assert all(quarantine_label("miner") not in p.metadata.labels for p in released)
    assert [a["state"] for a in status["actions"]] == ["Reverted", "Reverted"]


def test_no_matching_playbook_is_recorded(
    start_operator: Callable[..., OperatorProcess], custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    op = start_operator()
    create_incident(custom, namespace, "orphan", {"kind": "Pod", "namespace": namespace,
                                                  "name": "nothing"}, severity="low")
    status = wait_phase(custom, namespace, "orphan", "Suppressed", op)
    triaged = next(c for c in status["conditions"] if c["type"] == "Triaged")
    assert triaged["reason"] == "NoMatchingPlaybook"


def test_dry_run_records_the_plan_and_changes_nothing(
    start_operator: Callable[..., OperatorProcess], custom: client.CustomObjectsApi,
    make_app: Callable[..., list[client.V1Pod]], core: client.CoreV1Api,
    api_client: client.ApiClient, namespace: str,
) -> None:
    create_playbook(custom, "dry", {"mode": "dryRun", "steps": [
        {"name": "isolate", "action": "isolateNetwork", "params": {"scope": "workload"}},
        {"name": "stop", "action": "scaleDown"}]}, namespace=namespace)
    op = start_operator()
    make_app("web", 2)
    create_incident(custom, namespace, "rehearsal",
                    {"kind": "Deployment", "namespace": namespace, "name": "web"})
    status = wait_phase(custom, namespace, "rehearsal", "Suppressed", op)
    assert [a["state"] for a in status["actions"]] == ["Planned", "Planned"]
    assert "would quarantine" in status["actions"][0]["message"]
    assert {o["kind"] for o in status["actions"][0]["objects"]} == {"NetworkPolicy", "Pod"}
    assert "from 2 to 0" in status["actions"][1]["message"]
    assert client.NetworkingV1Api(api_client).list_namespaced_network_policy(namespace).items == []
    assert all(not any(k.startswith(QUARANTINE_PREFIX) for k in p.metadata.labels)
               for p in core.list_namespaced_pod(namespace).items)


def test_protected_namespace_is_refused(
    start_operator: Callable[..., OperatorProcess], custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    create_playbook(custom, f"everything-{namespace}", {
        "match": {"alertNames": [f"probe-{namespace}"]},
        "steps": [{"name": "isolate", "action": "isolateNetwork"}]})
    op = start_operator()
    create_incident(custom, namespace, "system", {"kind": "Pod", "namespace": "kube-system",
                                                  "name": "coredns"},
                    alertName=f"probe-{namespace}")
    status = wait_phase(custom, namespace, "system", "Failed", op)
    assert status["actions"][0]["state"] == "Refused"
    assert "kube-system is protected" in status["actions"][0]["message"]
    custom.delete_namespaced_custom_object(GROUP, VERSION, OPERATOR_NS, "responseplaybooks",
                                           f"everything-{namespace}")


def test_manual_approval(
    start_operator: Callable[..., OperatorProcess], custom: client.CustomObjectsApi,
    make_app: Callable[..., list[client.V1Pod]], api_client: client.ApiClient, namespace: str,
) -> None:
    create_playbook(custom, "careful", {
        "approval": {"policy": "manual", "timeoutSeconds": 600},
        "steps": [{"name": "isolate", "action": "isolateNetwork"}]}, namespace=namespace)
    op = start_operator()
    (pod,) = make_app("web", 1)
    create_incident(custom, namespace, "wait", {"kind": "Pod", "namespace": namespace,
                                                "name": pod.metadata.name})
    wait_phase(custom, namespace, "wait", "AwaitingApproval", op)
    networking = client.NetworkingV1Api(api_client)
    assert networking.list_namespaced_network_policy(namespace).items == []

    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents", "wait",
                                          {"spec": {"approval": {"decision": "approve",
                                                                 "by": "bob"}}})
    status = wait_phase(custom, namespace, "wait", "Contained", op)
    approved = next(c for c in status["conditions"] if c["type"] == "Approved")
    assert approved["reason"] == "ApprovedByPerson" and "bob" in approved["message"]
    assert len(networking.list_namespaced_network_policy(namespace).items) == 1


def test_deleting_an_incident_reverts_it(
    start_operator: Callable[..., OperatorProcess], playbook: str,
    make_app: Callable[..., list[client.V1Pod]], custom: client.CustomObjectsApi,
    apps: client.AppsV1Api, api_client: client.ApiClient, namespace: str,
) -> None:
    op = start_operator()
    pods = make_app("web", 2)
    create_incident(custom, namespace, "gone", {"kind": "Pod", "namespace": namespace,
                                                "name": pods[0].metadata.name})
    wait_phase(custom, namespace, "gone", "Contained", op)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents", "gone")
    networking = client.NetworkingV1Api(api_client)
    wait_for(lambda: not networking.list_namespaced_network_policy(namespace).items,
             what="the quarantine policy to be removed")
    assert apps.read_namespaced_deployment_scale("web", namespace).spec.replicas == 2

    def gone() -> bool:
        try:
            incident_status(custom, namespace, "gone")
        except client.exceptions.ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, what="the finalizer to be released and the incident removed")


def test_a_flood_beyond_the_budget_waits_throttled(
    start_operator: Callable[..., OperatorProcess], custom: client.CustomObjectsApi,
    make_app: Callable[..., list[client.V1Pod]], core: client.CoreV1Api, namespace: str,
) -> None:
    # The playbook's own budget: the cluster-wide one would count other tests' incidents.
    create_playbook(custom, "mark", {"budget": {"perMinute": 2}, "steps": [
        {"name": "mark", "action": "label", "params": {"labels": {"flagged": "yes"}}}]},
        namespace=namespace)
    op = start_operator("--budget-per-minute=0")
    pods = make_app("web", 5)
    for i, pod in enumerate(pods):
        create_incident(custom, namespace, f"flood-{i}",
                        {"kind": "Pod", "namespace": namespace, "name": pod.metadata.name})

    def phases() -> list[str] | None:
        found = sorted((incident_status(custom, namespace, f"flood-{i}").get("phase") or "")
                       for i in range(len(pods)))
        return found if found.count("Contained") == 2 and found.count("Throttled") == 3 \
            else None

    assert wait_for(phases, timeout=60, what="two contained, three throttled") == [
        "Contained", "Contained", "Throttled", "Throttled", "Throttled"]
    assert op.alive()
    throttled = next(incident_status(custom, namespace, f"flood-{i}") for i in range(len(pods))
                     if incident_status(custom, namespace, f"flood-{i}")["phase"] == "Throttled")
    contained = next(c for c in throttled["conditions"] if c["type"] == "Contained")
    assert contained["reason"] == "BudgetExhausted"
    assert f"the budget for playbook {namespace}/mark is 2 per minute" in contained["message"]
    labelled = [p for p in core.list_namespaced_pod(namespace).items
                if (p.metadata.labels or {}).get("flagged") == "yes"]
    assert len(labelled) == 2  # the waiting ones changed nothing
