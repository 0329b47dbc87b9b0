"""Guardrails: what no playbook may do, whatever it says. Pure functions.

They judge a step twice: on the incident's target before anything is read, and
on what the step prepared (every object it would touch, and facts such as how
many schedulable nodes a cordon would leave). A refusal is a sentence for the
incident's status; ``None`` means allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .api import ActionName, ObjectReference, Target
from .config import OperatorConfig


def check_target(target: Target | None, config: OperatorConfig) -> str | None:
    if target is not None and target.namespace in config.guarded_namespaces:
        return f"namespace {target.namespace} is protected: Firebreak never acts on it"
    return None


def check_step(
    action: ActionName,
    objects: Iterable[ObjectReference],
    facts: Mapping[str, int],
    config: OperatorConfig,
) -> str | None:
    for obj in objects:
        if obj.namespace in config.guarded_namespaces:
            return (f"{obj.kind} {obj.namespace}/{obj.name} is in protected namespace "
                    f"{obj.namespace}")
    if action is ActionName.cordon_node:
        remaining = facts.get("schedulableNodesAfter")
        if remaining is not None and remaining < config.min_schedulable_nodes:
            return (f"cordoning would leave {remaining} schedulable node(s), fewer than the "
                    f"minimum of {config.min_schedulable_nodes}")
    if action is ActionName.delete_pod:
        healthy = facts.get("healthyAfter")
        if healthy is not None and healthy < config.min_healthy_replicas:
            return (f"deleting would leave the workload {healthy} ready replica(s), fewer than "
                    f"the minimum of {config.min_healthy_replicas}")
    return None
