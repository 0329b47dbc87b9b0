"""cordonNode and scaleDown on a real API server: apply, re-apply, revert."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from firebreak.actions.base import ActionContext, ActionRefused, NoParams
from firebreak.actions.nodes import CORDONED_BY, CordonNode
from firebreak.actions.scale import ScaleDown
from firebreak.config import OperatorConfig
from firebreak.guardrails import check_step
from tests.controlplane import LocalCluster
from tests.helpers import record_calls, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def private_node(cluster: LocalCluster, core: client.CoreV1Api, namespace: str
                 ) -> Iterator[str]:
    """A fresh node nobody else schedules on, removed afterwards."""
    (name,) = cluster.add_nodes(1, prefix=f"n-{namespace}")
    wait_for(lambda: any(c.type == "Ready" and c.status == "True"
                         for c in core.read_node(name).status.conditions or []),
             what=f"node {name} ready")
    yield name
    core.delete_node(name)


def test_cordon_node_target(private_node: str, make_context: Callable[..., ActionContext],
                            core: client.CoreV1Api, monkeypatch: pytest.MonkeyPatch) -> None:
    action, ctx = CordonNode(), make_context("Node", private_node)
    prepared = action.prepare(ctx, NoParams())
    assert prepared.record.to_api() == {"version": 1, "nodes": [private_node]}
    total = len(core.list_node().items)
    schedulable = sum(not n.spec.unschedulable for n in core.list_node().items)
    assert prepared.facts["schedulableNodesAfter"] == schedulable - 1 <= total - 1

    action.apply(ctx, NoParams(), prepared.record)
    node = core.read_node(private_node)
    assert node.spec.unschedulable is True
    assert node.metadata.annotations[CORDONED_BY] == f"{ctx.incident.namespace}/{ctx.incident.name}"
    writes = record_calls(monkeypatch, ctx.kube.core, "patch_node")
    action.apply(ctx, NoParams(), prepared.record)
    assert writes == []
    monkeypatch.undo()

    action.revert(ctx, prepared.record)
    node = core.read_node(private_node)
    assert not node.spec.unschedulable
    assert CORDONED_BY not in (node.metadata.annotations or {})


def test_cordon_leaves_nodes_it_did_not_cordon(
    private_node: str, make_context: Callable[..., ActionContext], core: client.CoreV1Api
) -> None:
    core.patch_node(private_node, {"spec": {"unschedulable": True}})  # a person's cordon
    action, ctx = CordonNode(), make_context("Node", private_node)
    prepared = action.prepare(ctx, NoParams())
    assert prepared.record.to_api() == {"version": 1, "nodes": []}
    action.apply(ctx, NoParams(), prepared.record)
    action.revert(ctx, prepared.record)
    assert core.read_node(private_node).spec.unschedulable is True


def test_cordon_of_a_pods_node_and_the_minimum(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    core: client.CoreV1Api,
) -> None:
    (pod,) = make_app("web", 1)
    prepared = CordonNode().prepare(make_context("Pod", pod.metadata.name), NoParams())
    assert prepared.record.to_api() == {"version": 1, "nodes": [pod.spec.node_name]}
    schedulable = prepared.facts["schedulableNodesAfter"]
    strict = OperatorConfig(namespace="firebreak-system", min_schedulable_nodes=schedulable + 1)
    verdict = check_step(CordonNode.name, prepared.objects, prepared.facts, strict)
    assert verdict is not None and "fewer than the minimum" in verdict


def test_scale_down_remembers_and_restores(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    apps: client.AppsV1Api, namespace: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    pods = make_app("api", 3)
    action = ScaleDown()
    ctx = make_context("Pod", pods[0].metadata.name)  # walks Pod -> ReplicaSet -> Deployment
    params = action.parse({"replicas": 0})
    prepared = action.prepare(ctx, params)
    assert prepared.record.kind == "Deployment" and prepared.record.name == "api"
    assert prepared.record.previous_replicas == 3

    action.apply(ctx, params, prepared.record)
    scale = apps.read_namespaced_deployment_scale("api", namespace)
    assert (scale.spec.replicas or 0) == 0
    writes = record_calls(monkeypatch, ctx.kube.apps, "patch_namespaced_deployment_scale")
    action.apply(ctx, params, prepared.record)  # re-apply after a crash: same record
    assert writes == []
    monkeypatch.undo()

    assert "restored" in action.revert(ctx, prepared.record)
    assert apps.read_namespaced_deployment_scale("api", namespace).spec.replicas == 3
    assert "already at 3" in action.revert(ctx, prepared.record)


def test_scale_down_revert_respects_a_later_change(
    make_app: Callable[..., list[client.V1Pod]], make_context: Callable[..., ActionContext],
    apps: client.AppsV1Api, namespace: str,
) -> None:
    make_app("api", 2)
    action, ctx = ScaleDown(), make_context("Deployment", "api")
    params = action.parse({})
    prepared = action.prepare(ctx, params)
    action.apply(ctx, params, prepared.record)
    apps.patch_namespaced_deployment_scale("api", namespace, {"spec": {"replicas": 1}})
    assert "changed by someone else" in action.revert(ctx, prepared.record)
    assert apps.read_namespaced_deployment_scale("api", namespace).spec.replicas == 1


def test_scale_down_refuses_a_bare_pod(
    core: client.CoreV1Api, namespace: str, make_context: Callable[..., ActionContext]
) -> None:
    core.create_namespaced_pod(namespace, client.V1Pod(
        metadata=client.V1ObjectMeta(name="bare"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")])))
    with pytest.raises(ActionRefused, match="Deployment or StatefulSet"):
        ScaleDown().prepare(make_context("Pod", "bare"), ScaleDown().parse({}))
