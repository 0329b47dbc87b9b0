"""Planning: steps from a playbook, with every problem named. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from firebreak.actions import registry
from firebreak.api import ActionName, ResponsePlaybookSpec, SecurityIncidentSpec
from firebreak.planning import PlanError, plan

ACTIONS = registry()


def check(action: ActionName, params: Any) -> None:
    ACTIONS[action].parse(dict(params))


def spec(target: dict[str, Any] | None) -> SecurityIncidentSpec:
    return SecurityIncidentSpec.model_validate({
        "source": "manual", "severity": "high", "title": "t",
        **({"target": target} if target else {})})


POD = {"kind": "Pod", "namespace": "shop", "name": "web-1"}
NODE = {"kind": "Node", "name": "node-1"}


def steps(*items: dict[str, Any]) -> ResponsePlaybookSpec:
    return ResponsePlaybookSpec.model_validate({"steps": list(items)})


def test_plan_keeps_order_params_and_failure_policy() -> None:
    planned = plan(spec(POD), steps(
        {"name": "evidence", "action": "snapshot", "onFailure": "continue"},
        {"name": "isolate", "action": "isolateNetwork", "params": {"allowDNS": False}},
        {"name": "stop", "action": "scaleDown", "params": {"replicas": 0}},
    ), check)
    assert [(s.name, s.action.value, s.on_failure.value) for s in planned] == [
        ("evidence", "snapshot", "continue"),
        ("isolate", "isolateNetwork", "abort"),
        ("stop", "scaleDown", "abort"),
    ]
    assert planned[1].params == {"allowDNS": False}


@pytest.mark.parametrize(("target", "playbook_steps", "problem"), [
    (None, [{"name": "a", "action": "snapshot"}], "names no target"),
    (NODE, [{"name": "a", "action": "isolateNetwork"}], "cannot act on a Node"),
    (NODE, [{"name": "a", "action": "scaleDown"}], "cannot act on a Node"),
    (POD, [{"name": "a", "action": "snapshot"}, {"name": "a", "action": "label",
                                                  "params": {"labels": {"x": "y"}}}], "used twice"),
    (POD, [{"name": "a", "action": "scaleDown", "params": {"replicas": -1}}], "replicas"),
    (POD, [{"name": "a", "action": "isolateNetwork", "params": {"scope": "galaxy"}}], "scope"),
    (POD, [{"name": "a", "action": "isolateNetwork", "params": {"bogus": 1}}], "bogus"),
])
def test_plan_errors_name_the_problem(target: dict[str, Any] | None,
                                      playbook_steps: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(PlanError, match=problem):
        plan(spec(target), steps(*playbook_steps), check)


def test_node_target_allows_node_actions() -> None:
    planned = plan(spec(NODE), steps({"name": "c", "action": "cordonNode"},
                                     {"name": "s", "action": "snapshot"}), check)
    assert [s.action for s in planned] == [ActionName.cordon_node, ActionName.snapshot]
