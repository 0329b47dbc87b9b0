"""Guardrails refuse what no playbook may do. Pure, table-driven."""

from __future__ import annotations

import pytest

from firebreak.api import ActionName, ObjectReference, Target, TargetKind
from firebreak.config import OperatorConfig
from firebreak.guardrails import check_step, check_target

CONFIG = OperatorConfig(namespace="firebreak-system", protected_namespaces=frozenset({"vault"}),
                        min_schedulable_nodes=2, min_healthy_replicas=1)


@pytest.mark.parametrize(("namespace", "refused"), [
    ("shop", False),
    ("kube-system", True),       # always protected
    ("firebreak-system", True),  # the operator's own namespace
    ("vault", True),             # configured
    (None, False),               # a Node
])
def test_target_namespace(namespace: str | None, refused: bool) -> None:
    kind = TargetKind.node if namespace is None else TargetKind.pod
    target = Target(kind=kind, namespace=namespace, name="x")
    verdict = check_target(target, CONFIG)
    assert (verdict is not None) is refused
    if refused:
        assert f"namespace {namespace} is protected" in verdict  # type: ignore[operator]


def test_any_touched_object_in_a_protected_namespace_is_refused() -> None:
    objects = [ObjectReference(kind="Pod", namespace="shop", name="a"),
               ObjectReference(kind="Pod", namespace="kube-system", name="coredns")]
    verdict = check_step(ActionName.isolate_network, objects, {}, CONFIG)
    assert verdict is not None and "kube-system/coredns" in verdict


@pytest.mark.parametrize(("remaining", "refused"), [(3, False), (2, False), (1, True), (0, True)])
def test_cordon_keeps_minimum_schedulable_nodes(remaining: int, refused: bool) -> None:
    verdict = check_step(ActionName.cordon_node, [], {"schedulableNodesAfter": remaining}, CONFIG)
    assert (verdict is not None) is refused


@pytest.mark.parametrize(("healthy", "refused"), [(2, False), (1, False), (0, True)])
def test_delete_pod_keeps_minimum_healthy_replicas(healthy: int, refused: bool) -> None:
    verdict = check_step(ActionName.delete_pod, [], {"healthyAfter": healthy}, CONFIG)
    assert (verdict is not None) is refused


def test_facts_of_other_actions_are_ignored() -> None:
    assert check_step(ActionName.scale_down, [], {"schedulableNodesAfter": 0}, CONFIG) is None
