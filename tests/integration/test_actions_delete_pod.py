"""The deletePod action against a real API server: the controller replaces the pod,
and applying the same decision again never deletes the replacement."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kubernetes import client

from firebreak.actions.base import ActionContext, ActionRefused
from firebreak.actions.pods import DeletePod
from firebreak.api import ActionName
from firebreak.config import OperatorConfig
from firebreak.guardrails import check_step
from tests.helpers import running_pods, wait_for

pytestmark = pytest.mark.cluster


def _uids(pods: list[client.V1Pod]) -> set[str]:
    return {p.metadata.uid for p in pods}


def test_deleted_pod_is_replaced_and_reapply_spares_the_replacement(
    make_context: Callable[..., ActionContext], make_app: Callable[..., list[client.V1Pod]],
    core: client.CoreV1Api, namespace: str
) -> None:
    pods = make_app("web", 2)
    victim = pods[0].metadata
    action, ctx = DeletePod(), make_context("Pod", victim.name)
    params = action.parse({"gracePeriodSeconds": 0})

    prepared = action.prepare(ctx, params)
    assert prepared.facts == {"healthyAfter": 1}
    assert prepared.record.to_api() == {"version": 1, "pods": [
        {"namespace": namespace, "name": victim.name, "uid": victim.uid}]}
    assert [(o.kind, o.name) for o in prepared.objects] == [("Pod", victim.name)]
    assert check_step(ActionName.delete_pod, prepared.objects, prepared.facts,
                      OperatorConfig(namespace="firebreak-system")) is None

    applied = action.apply(ctx, params, prepared.record)
    assert applied.message == f"deleted {victim.name}"
    assert applied.record is None

    replaced = wait_for(
        lambda: (p := running_pods(core, namespace, "web")) and len(p) == 2
        and victim.uid not in _uids(p) and p,
        timeout=60, what="a replacement pod")
    wait_for(lambda: not [p for p in core.list_namespaced_pod(namespace).items
                          if p.metadata.uid == victim.uid],
             timeout=60, what="the deleted pod to be gone")

    again = action.apply(ctx, params, prepared.record)

    assert again.message == f"deleted no pods; {victim.name} already gone"
    after = core.list_namespaced_pod(namespace).items
    assert _uids(after) == _uids(replaced)
    assert all(p.metadata.deletion_timestamp is None for p in after)


def test_statefulset_replacement_of_the_same_name_is_not_deleted_on_reapply(
    make_context: Callable[..., ActionContext], core: client.CoreV1Api,
    apps: client.AppsV1Api, namespace: str
) -> None:
    labels = {"app": "db"}
    apps.create_namespaced_stateful_set(namespace, client.V1StatefulSet(
        metadata=client.V1ObjectMeta(name="db"),
        spec=client.V1StatefulSetSpec(
            replicas=1, service_name="db",
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="db", image="db")])),
        )))
    (first,) = wait_for(lambda: running_pods(core, namespace, "db"), timeout=60,
                        what="db-0 running")
    action, ctx = DeletePod(), make_context("Pod", "db-0")
    params = action.parse({"gracePeriodSeconds": 0})
    prepared = action.prepare(ctx, params)
    assert prepared.facts == {"healthyAfter": 0}

    assert action.apply(ctx, params, prepared.record).message == "deleted db-0"
    (second,) = wait_for(
        lambda: [p for p in running_pods(core, namespace, "db")
                 if p.metadata.uid != first.metadata.uid],
        timeout=60, what="a new db-0")
    assert second.metadata.name == "db-0"

    again = action.apply(ctx, params, prepared.record)

    assert again.message.startswith("deleted no pods; db-0 already replaced")
    current = core.read_namespaced_pod("db-0", namespace)
    assert current.metadata.uid == second.metadata.uid
    assert current.metadata.deletion_timestamp is None


def test_healthy_after_counts_the_ready_replicas_left(
    make_context: Callable[..., ActionContext], make_app: Callable[..., list[client.V1Pod]]
) -> None:
    (pod,) = make_app("solo", 1)
    action = DeletePod()
    config = OperatorConfig(namespace="firebreak-system", min_healthy_replicas=1)
    ctx = make_context("Pod", pod.metadata.name, config=config)

    prepared = action.prepare(ctx, action.parse({}))

    assert prepared.facts == {"healthyAfter": 0}
    assert check_step(ActionName.delete_pod, prepared.objects, prepared.facts, config) == (
        "deleting would leave the workload 0 ready replica(s), fewer than the minimum of 1")


def test_workload_scope_deletes_every_replica_of_the_workload(
    make_context: Callable[..., ActionContext], make_app: Callable[..., list[client.V1Pod]],
    core: client.CoreV1Api, namespace: str
) -> None:
    pods = make_app("web", 2)
    action, ctx = DeletePod(), make_context("Deployment", "web")

    with pytest.raises(ActionRefused, match="use scope 'workload'"):
        action.prepare(ctx, action.parse({}))

    params = action.parse({"scope": "workload", "gracePeriodSeconds": 0})
    prepared = action.prepare(ctx, params)
    assert prepared.facts == {"healthyAfter": 0}
    assert {p.uid for p in prepared.record.pods} == _uids(pods)

    action.apply(ctx, params, prepared.record)
    wait_for(lambda: (p := running_pods(core, namespace, "web")) and len(p) == 2
             and not _uids(p) & _uids(pods),
             timeout=60, what="two new replicas")


def test_a_pod_without_controller_has_no_healthy_fact(
    make_context: Callable[..., ActionContext], core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_pod(namespace, client.V1Pod(
        metadata=client.V1ObjectMeta(name="bare"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")])))
    action, ctx = DeletePod(), make_context("Pod", "bare")

    prepared = action.prepare(ctx, action.parse({}))

    assert prepared.facts == {}
    assert prepared.warnings == ["Pod bare has no controller: nothing will replace it"]


def test_a_node_target_is_refused(make_context: Callable[..., ActionContext]) -> None:
    action = DeletePod()
    with pytest.raises(ActionRefused, match="the target is a Node; this step acts on pods"):
        action.prepare(make_context("Node", "kwok-node-0"), action.parse({}))


def test_unknown_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="gracePeriod"):
        DeletePod().parse({"gracePeriod": 1})
    with pytest.raises(ValueError, match="scope"):
        DeletePod().parse({"scope": "cluster"})
