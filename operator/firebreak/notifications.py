"""Notifications: which transitions of an incident are due to be announced, and the
bodies that announce them. Pure: conditions and records in, data out.

A transition is read from the conditions, never from the phase alone, and is known by
its event and the ``lastTransitionTime`` of the condition that shows it (``since``):

- ``AwaitingApproval``: ``Approved=False`` with reason ``AwaitingApproval``;
- ``Contained``: ``Contained=True``;
- ``IsolationDefeated``: ``Isolated=False``;
- ``Failed``: the derived phase is ``Failed`` for any other reason (a step failed, no
  step applied, an invalid playbook, a revert that failed);
- ``Resolved``: ``Resolved=True``.

A transition is due to a notification that asks for its event until a delivery for
that notification and event with the same or a later ``since`` is recorded. The
engine records a delivery after making it, so a transition is announced at least
once: a crash between the two announces it again. Containment that is defeated and
then restored is a new ``Contained`` (a later ``since``) and is announced again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from string import Template
from typing import Any

from . import conditions as c
from .api import (
    Condition,
    ConditionStatus,
    Delivery,
    NotificationEvent,
    NotificationFormat,
    Phase,
    PlaybookNotification,
    SecurityIncidentSpec,
)

DELIVERIES_KEPT = 50
TRANSITION_MESSAGE = "[${severity}] ${event}: ${incident} (${title}): ${detail}"
STEP_MESSAGE = "[${severity}] ${incident} (${title}): ${detail}"


@dataclass(frozen=True)
class Occurrence:
    """A transition as the conditions show it now."""

    event: NotificationEvent
    since: dt.datetime
    detail: str


def occurrences(conditions: Sequence[Condition], resolution_requested: bool
                ) -> list[Occurrence]:
    """The announceable transitions the conditions show, in the order of the events."""
    found: list[Occurrence] = []

    def add(event: NotificationEvent, condition: Condition | None) -> None:
        if condition is not None:
            found.append(Occurrence(event, condition.last_transition_time, condition.message))

    approved = c.find(conditions, c.APPROVED)
    if approved is not None and approved.reason == c.AWAITING_APPROVAL:
        add(NotificationEvent.awaiting_approval, approved)
    contained = c.find(conditions, c.CONTAINED)
    if contained is not None and contained.status is ConditionStatus.true:
        add(NotificationEvent.contained, contained)
    isolated = c.find(conditions, c.ISOLATED)
    if isolated is not None and isolated.status is ConditionStatus.false:
        add(NotificationEvent.isolation_defeated, isolated)
    if c.derive_phase(conditions, resolution_requested) is Phase.failed:
        add(NotificationEvent.failed, _failing(conditions))
    resolved = c.find(conditions, c.RESOLVED)
    if resolved is not None and resolved.status is ConditionStatus.true:
        add(NotificationEvent.resolved, resolved)
    return found


def _failing(conditions: Sequence[Condition]) -> Condition | None:
    """The condition that makes the phase Failed; None when it is the quarantine's (a
    transition of its own, IsolationDefeated)."""
    for type_ in (c.RESOLVED, c.TRIAGED, c.CONTAINED):
        condition = c.find(conditions, type_)
        if condition is not None and condition.status is ConditionStatus.false:
            return None if condition.reason == c.ISOLATION_DEFEATED else condition
    return None  # pragma: no cover - a Failed phase always has a False condition


def due(notifications: Sequence[PlaybookNotification], now_showing: Sequence[Occurrence],
        deliveries: Sequence[Delivery]) -> list[tuple[PlaybookNotification, Occurrence]]:
    """The (notification, transition) pairs not yet announced, in the playbook's order."""
    latest: dict[tuple[str, NotificationEvent], dt.datetime] = {}
    for d in deliveries:
        key = (d.notification, d.event)
        latest[key] = max(latest.get(key, d.since), d.since)
    return [(n, o) for n in notifications for o in now_showing
            if o.event in n.events and not (
                (n.name, o.event) in latest and latest[(n.name, o.event)] >= o.since)]


def record(deliveries: Sequence[Delivery], delivery: Delivery,
           limit: int = DELIVERIES_KEPT) -> list[Delivery]:
    """The deliveries with one more, oldest dropped beyond ``limit``; the latest of every
    (notification, event) is always kept, since it is what keeps a transition from being
    announced twice."""
    kept = [*deliveries, delivery]
    latest = {(d.notification, d.event): i for i, d in enumerate(kept)}
    keep = set(latest.values())
    excess = len(kept) - limit
    result = []
    for i, d in enumerate(kept):
        if excess > 0 and i not in keep:
            excess -= 1
            continue
        result.append(d)
    return result


def variables(*, namespace: str, name: str, spec: SecurityIncidentSpec, phase: Phase | None,
              playbook: str, event: str, detail: str, time: dt.datetime) -> dict[str, str]:
    """The values of the placeholders (``api.PLACEHOLDERS``) but ``message``."""
    target = spec.target
    where = "" if target is None else (
        f"{target.kind.value} {target.namespace}/{target.name}" if target.namespace
        else f"{target.kind.value} {target.name}")
    return {
        "incident": f"{namespace}/{name}",
        "namespace": namespace,
        "name": name,
        "severity": spec.severity.value,
        "title": spec.title,
        "source": spec.source.value,
        "alertName": spec.alert_name or "",
        "target": where,
        "playbook": playbook,
        "phase": phase.value if phase is not None else "",
        "event": event,
        "detail": detail,
        "time": time.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
    }


def _fill(template: Any, values: Mapping[str, str]) -> Any:
    """The template with every string in it filled in; keys and other values as they are."""
    if isinstance(template, str):
        return Template(template).safe_substitute(values)
    if isinstance(template, dict):
        return {key: _fill(item, values) for key, item in template.items()}
    if isinstance(template, list):
        return [_fill(item, values) for item in template]
    return template


def render(format_: NotificationFormat, message: str | None, body: dict[str, Any] | None,
           values: Mapping[str, str], default_message: str = TRANSITION_MESSAGE
           ) -> dict[str, Any]:
    """The JSON document to post. Values are put into strings, never into the JSON text,
    so whatever a title or a label holds, the document stays what the template says."""
    text = _fill(message or default_message, values)
    if format_ is NotificationFormat.slack:
        return {"text": text}
    filled = {**values, "message": text}
    if body is not None:
        result: dict[str, Any] = _fill(body, filled)
        return result
    return {
        "source": "firebreak",
        "event": values["event"],
        "incident": {"namespace": values["namespace"], "name": values["name"]},
        "severity": values["severity"],
        "title": values["title"],
        "target": values["target"],
        "playbook": values["playbook"],
        "phase": values["phase"],
        "message": text,
        "time": values["time"],
    }
