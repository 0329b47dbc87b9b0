"""Planning: from an incident and its playbook to a list of steps. Pure.

A plan is decided once, at triage, and kept in the incident's status: later
changes to the playbook do not change a response already under way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .api import (
    DEFAULT_ON_FAILURE,
    ActionName,
    OnFailure,
    ResponsePlaybookSpec,
    SecurityIncidentSpec,
    TargetKind,
)

WORKLOAD_ONLY = {ActionName.scale_down, ActionName.isolate_network, ActionName.delete_pod}


class PlanError(ValueError):
    """The playbook cannot answer this incident as written (a permanent problem)."""


@dataclass(frozen=True)
class PlannedStep:
    name: str
    action: ActionName
    params: dict[str, Any]
    on_failure: OnFailure


ParamsCheck = Callable[[ActionName, Mapping[str, Any]], None]


def plan(incident: SecurityIncidentSpec, playbook: ResponsePlaybookSpec,
         check_params: ParamsCheck) -> list[PlannedStep]:
    """The steps to run for this incident, or PlanError naming the first problem.

    ``check_params`` validates one step's parameters (raising ValidationError); it
    comes from the action registry so this module stays free of I/O and actions.
    """
    if incident.target is None:
        raise PlanError("the incident names no target, and every step acts on one")
    steps = []
    seen: set[str] = set()
    for step in playbook.steps:
        if step.name in seen:
            raise PlanError(f"step name {step.name!r} is used twice")
        seen.add(step.name)
        if incident.target.kind is TargetKind.node and step.action in WORKLOAD_ONLY:
            raise PlanError(f"step {step.name!r}: {step.action.value} cannot act on a Node target")
        params = step.params.to_api() if step.params is not None else {}
        try:
            check_params(step.action, params)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors()
            )
            raise PlanError(f"step {step.name!r} ({step.action.value}): {problems}") from exc
        on_failure = step.on_failure or DEFAULT_ON_FAILURE.get(step.action, OnFailure.abort)
        steps.append(PlannedStep(step.name, step.action, params, on_failure))
    return steps
