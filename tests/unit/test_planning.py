"""Planning: steps from a playbook, with every problem named. Pure."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from firebreak.actions import registry
from firebreak.api import (
    ActionName,
    OnFailure,
    PlaybookStep,
    ResponsePlaybookSpec,
    SecurityIncidentSpec,
)
from firebreak.planning import PlanError, PlannedStep, plan

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


NOTIFY = {"secretRef": {"name": "oncall"}}


def test_a_failed_notification_holds_nothing_back_unless_the_playbook_says_so() -> None:
    planned = plan(spec(POD), steps(
        {"name": "tell", "action": "notify", "params": NOTIFY},
        {"name": "tell-or-stop", "action": "notify", "params": NOTIFY, "onFailure": "abort"},
        {"name": "mark", "action": "label", "params": {"labels": {"a": "b"}},
         "onFailure": "continue"},
    ), check)
    assert [s.on_failure for s in planned] == [OnFailure.continue_, OnFailure.abort,
                                               OnFailure.continue_]


@pytest.mark.parametrize(("target", "playbook_steps", "problem"), [
    (None, [{"name": "a", "action": "snapshot"}], "names no target"),
    (NODE, [{"name": "a", "action": "isolateNetwork"}], "cannot act on a Node"),
    (NODE, [{"name": "a", "action": "scaleDown"}], "cannot act on a Node"),
    (POD, [{"name": "a", "action": "snapshot"}, {"name": "a", "action": "label",
                                                  "params": {"labels": {"x": "y"}}}], "used twice"),
])
def test_plan_errors_name_the_problem(target: dict[str, Any] | None,
                                      playbook_steps: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(PlanError, match=problem):
        plan(spec(target), steps(*playbook_steps), check)


def test_node_target_allows_node_actions() -> None:
    planned = plan(spec(NODE), steps({"name": "c", "action": "cordonNode"},
                                     {"name": "s", "action": "snapshot"}), check)
    assert [s.action for s in planned] == [ActionName.cordon_node, ActionName.snapshot]


class _Params(BaseModel):
    """Stands in for an action's parameters, to see how planning reports their errors."""

    model_config = ConfigDict(extra="forbid")
    replicas: int = 0
    labels: dict[str, int] = {}

    @model_validator(mode="after")
    def _not_both(self) -> _Params:
        if self.replicas and self.labels:
            raise ValueError("replicas and labels exclude each other")
        return self


def check_with_model(action: ActionName, params: Any) -> None:
    _Params.model_validate(dict(params))


@dataclasses.dataclass(frozen=True)
class _Unchecked:
    """Params as a stored plan could hold them, past the playbook's own validation."""

    params: dict[str, Any]

    def to_api(self) -> dict[str, Any]:
        return self.params


def unchecked_step(name: str, action: ActionName, params: dict[str, Any]) -> ResponsePlaybookSpec:
    step = PlaybookStep.model_construct(name=name, action=action, params=_Unchecked(params),
                                        on_failure=OnFailure.abort)
    return ResponsePlaybookSpec.model_construct(steps=[step])


@pytest.mark.parametrize(("params", "message"), [
    ({"replicas": "many"}, "step 's' (scaleDown): replicas: Input should be a valid integer, "
                           "unable to parse string as an integer"),
    ({"labels": {"team": "x"}}, "step 's' (scaleDown): labels.team: Input should be a valid integer, "
                                "unable to parse string as an integer"),
    ({"replicas": "x", "bogus": 1}, "step 's' (scaleDown): replicas: Input should be a valid integer, "
                                    "unable to parse string as an integer; "
                                    "bogus: Extra inputs are not permitted"),
    # An error about the parameters as a whole has no field to name.
    ({"replicas": 1, "labels": {"a": 1}},
     "step 's' (scaleDown): params: Value error, replicas and labels exclude each other"),
])
def test_parameter_errors_are_one_sentence(params: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError) as raised:
        plan(spec(POD), unchecked_step("s", ActionName.scale_down, params), check_with_model)
    assert str(raised.value) == message


def test_an_incident_without_target_is_refused_with_the_reason() -> None:
    with pytest.raises(PlanError) as raised:
        plan(spec(None), steps({"name": "a", "action": "snapshot"}), check)
    assert str(raised.value) == "the incident names no target, and every step acts on one"


def test_a_planned_step_cannot_change() -> None:
    planned = plan(spec(POD), steps({"name": "a", "action": "snapshot"}), check)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        planned.name = "b"  # type: ignore[misc]
    assert planned == PlannedStep("a", ActionName.snapshot, {}, planned.on_failure)


# The cases a playbook once carried to the first incident: now the playbook itself is
# invalid (as the CRD refuses it at apply time), and never reaches planning.
@pytest.mark.parametrize(("params", "action", "problem"), [
    ({"scope": "cluster"}, "isolateNetwork", "steps.0.params.scope"),
    ({"replicas": -1}, "scaleDown", "steps.0.params.replicas"),
    ({"replicas": "zero"}, "scaleDown", "steps.0.params.replicas"),
    ({"replicas": "3"}, "scaleDown", "steps.0.params.replicas"),
    ({"bogus": 1}, "isolateNetwork", "steps.0.params.bogus"),
    ({"dnsSelector": ["k8s-app=kube-dns"]}, "isolateNetwork", "steps.0.params.dnsSelector"),
    ({"forensicsNamespace": "Not_A_Namespace!"}, "isolateNetwork",
     "steps.0.params.forensicsNamespace"),
    ({"allowDNS": "no"}, "isolateNetwork", "steps.0.params.allowDNS"),
    ({"detach": "yes"}, "isolateNetwork", "steps.0.params.detach"),
    ({"replicas": 0}, "isolateNetwork", "params replicas do not apply to isolateNetwork"),
    ({"scope": "pod"}, "cordonNode", "params scope do not apply to cordonNode"),
    ({}, "label", "label needs params labels"),
])
def test_invalid_params_make_the_playbook_invalid(params: dict[str, Any], action: str,
                                                  problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        steps({"name": "a", "action": action, "params": params})


def test_params_shared_by_two_actions_are_accepted_by_both() -> None:
    planned = plan(spec(POD), steps(
        {"name": "a", "action": "isolateNetwork", "params": {"scope": "workload",
                                                             "allowDNS": False}},
        {"name": "b", "action": "deletePod", "params": {"scope": "workload"}},
    ), check)
    assert [p.params for p in planned] == [{"scope": "workload", "allowDNS": False},
                                           {"scope": "workload"}]
