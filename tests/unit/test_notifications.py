"""Notifications, pure: which transitions are due, and the bodies that announce them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from pydantic import ValidationError

from firebreak import conditions as c
from firebreak.api import (
    Condition,
    ConditionStatus,
    Delivery,
    DeliveryState,
    NotificationEvent,
    NotificationFormat,
    Phase,
    PlaybookNotification,
    ResponsePlaybookSpec,
    SecurityIncidentSpec,
    StepParams,
    Target,
    TargetKind,
    template_problem,
)
from firebreak.notifications import (
    STEP_MESSAGE,
    Occurrence,
    due,
    occurrences,
    record,
    render,
    variables,
)

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
E = NotificationEvent


def at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def cond(type_: str, status: str, reason: str, minutes: int = 0, message: str = "m"
         ) -> Condition:
    return Condition(type=type_, status=ConditionStatus(status), reason=reason,
                     message=message, last_transition_time=at(minutes))


TRIAGED = cond(c.TRIAGED, "True", c.PLAYBOOK_SELECTED)


@pytest.mark.parametrize(("conditions", "requested", "expected"), [
    ([], False, []),
    ([TRIAGED, cond(c.APPROVED, "False", c.AWAITING_APPROVAL, 1, "waiting"),
      cond(c.CONTAINED, "False", c.NOT_STARTED)], False,
     [Occurrence(E.awaiting_approval, at(1), "waiting")]),
    # Rejected: the same False status, another reason; nothing to announce.
    ([TRIAGED, cond(c.APPROVED, "False", c.REJECTED_BY_PERSON, 1),
      cond(c.CONTAINED, "False", c.REJECTED_BY_PERSON)], False, []),
    ([TRIAGED, cond(c.APPROVED, "True", c.APPROVED_BY_PERSON, 2),
      cond(c.CONTAINED, "True", c.STEPS_APPLIED, 3, "2 of 2 steps applied"),
      cond(c.ISOLATED, "True", c.ISOLATION_VERIFIED, 3)], False,
     [Occurrence(E.contained, at(3), "2 of 2 steps applied")]),
    # Defeated: its own event, not Failed as well.
    ([TRIAGED, cond(c.APPROVED, "True", c.APPROVAL_NOT_REQUIRED),
      cond(c.CONTAINED, "False", c.ISOLATION_DEFEATED, 4),
      cond(c.ISOLATED, "False", c.ISOLATION_DEFEATED, 4, "web-1: ingress from anywhere")], False,
     [Occurrence(E.isolation_defeated, at(4), "web-1: ingress from anywhere")]),
    ([TRIAGED, cond(c.APPROVED, "True", c.APPROVAL_NOT_REQUIRED),
      cond(c.CONTAINED, "False", c.STEP_FAILED, 5, "step isolate did not complete")], False,
     [Occurrence(E.failed, at(5), "step isolate did not complete")]),
    ([cond(c.TRIAGED, "False", c.INVALID_PLAYBOOK, 6, "bad playbook")], False,
     [Occurrence(E.failed, at(6), "bad playbook")]),
    # Suppressed is not a failure.
    ([cond(c.TRIAGED, "False", c.NO_MATCHING_PLAYBOOK, 6)], False, []),
    ([TRIAGED, cond(c.CONTAINED, "True", c.STEPS_APPLIED, 3),
      cond(c.RESOLVED, "False", c.REVERT_FAILED, 7, "could not revert")], True,
     [Occurrence(E.contained, at(3), "m"), Occurrence(E.failed, at(7), "could not revert")]),
    ([TRIAGED, cond(c.CONTAINED, "True", c.STEPS_APPLIED, 3),
      cond(c.RESOLVED, "False", c.REVERTING, 7)], True,
     [Occurrence(E.contained, at(3), "m")]),
    ([TRIAGED, cond(c.CONTAINED, "True", c.STEPS_APPLIED, 3),
      cond(c.RESOLVED, "True", c.REVERTED, 8, "reverted 2 step(s)")], True,
     [Occurrence(E.contained, at(3), "m"), Occurrence(E.resolved, at(8), "reverted 2 step(s)")]),
])
def test_occurrences_are_read_from_the_conditions(conditions: list[Condition], requested: bool,
                                                  expected: list[Occurrence]) -> None:
    assert occurrences(conditions, requested) == expected


def notification(name: str = "oncall", *events: E) -> PlaybookNotification:
    return PlaybookNotification(name=name, events=list(events or E),
                                secret_ref={"name": "hook"})  # type: ignore[arg-type]


def delivery(name: str, event: E, since: int, state: str = "Sent") -> Delivery:
    return Delivery(notification=name, event=event, since=at(since), state=DeliveryState(state),
                    time=at(since), attempts=1)


CONTAINED_AT_3 = Occurrence(E.contained, at(3), "m")
RESOLVED_AT_8 = Occurrence(E.resolved, at(8), "m")


def test_due_pairs_each_notification_with_the_events_it_asks_for_in_order() -> None:
    all_events, only_resolved = notification("all"), notification("end", E.resolved)
    assert due([all_events, only_resolved], [CONTAINED_AT_3, RESOLVED_AT_8], []) == [
        (all_events, CONTAINED_AT_3), (all_events, RESOLVED_AT_8), (only_resolved, RESOLVED_AT_8)]


@pytest.mark.parametrize(("deliveries", "expected"), [
    ([delivery("all", E.contained, 3)], []),
    # A failed delivery is on record too: it was tried, with its retries.
    ([delivery("all", E.contained, 3, "Failed")], []),
    ([delivery("all", E.contained, 4)], []),
    # Defeated and restored: a later Contained is announced again.
    ([delivery("all", E.contained, 2)], [CONTAINED_AT_3]),
    # The latest delivery decides, whatever the order of the records.
    ([delivery("all", E.contained, 3), delivery("all", E.contained, 1)], []),
    ([delivery("other", E.contained, 3)], [CONTAINED_AT_3]),
    ([delivery("all", E.resolved, 3)], [CONTAINED_AT_3]),
])
def test_a_transition_is_due_until_a_delivery_of_it_is_recorded(
        deliveries: list[Delivery], expected: list[Occurrence]) -> None:
    found = due([notification("all")], [CONTAINED_AT_3], deliveries)
    assert [o for _, o in found] == expected


def test_record_keeps_the_latest_of_every_notification_and_event_beyond_the_limit() -> None:
    first = delivery("a", E.awaiting_approval, 0)
    flapping = [delivery("a", E.contained, m) for m in range(1, 5)]
    kept = record([first, *flapping[:-1]], flapping[-1], limit=3)
    assert kept == [first, flapping[2], flapping[3]]
    assert record([], first, limit=3) == [first]
    assert record([first], flapping[0], limit=2) == [first, flapping[0]]
    many = [delivery("a", E.contained, m) for m in range(60)]
    assert record(many[:-1], many[-1]) == many[-50:]


def test_an_occurrence_cannot_change() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONTAINED_AT_3.detail = "x"  # type: ignore[misc]


SPEC = SecurityIncidentSpec.model_validate({
    "source": "alertmanager", "severity": "critical", "title": 'Miner "x" & <y>',
    "alertName": "CryptoMiner", "target": {"kind": "Pod", "namespace": "shop", "name": "web-1"}})


def values(**changes: Any) -> dict[str, str]:
    base: dict[str, Any] = {"namespace": "shop", "name": "miner", "spec": SPEC,
                            "phase": Phase.contained, "playbook": "firebreak-system/crypto",
                            "event": "Contained", "detail": "2 of 2 steps applied",
                            "time": dt.datetime(2025, 3, 1, 13, 0, 1, 500000,
                                                tzinfo=dt.timezone(dt.timedelta(hours=1)))}
    return variables(**{**base, **changes})


def test_variables_name_the_incident_its_signal_and_the_transition() -> None:
    assert values() == {
        "incident": "shop/miner", "namespace": "shop", "name": "miner",
        "severity": "critical", "title": 'Miner "x" & <y>', "source": "alertmanager",
        "alertName": "CryptoMiner", "target": "Pod shop/web-1",
        "playbook": "firebreak-system/crypto", "phase": "Contained", "event": "Contained",
        "detail": "2 of 2 steps applied", "time": "2025-03-01T12:00:01.500000Z"}


def test_variables_of_a_node_target_and_of_no_target_or_phase() -> None:
    node = SPEC.model_copy(update={"target": Target(kind=TargetKind.node, name="node-a"),
                                   "alert_name": None})
    found = values(spec=node, phase=None)
    assert (found["target"], found["alertName"], found["phase"]) == ("Node node-a", "", "")
    assert values(spec=SPEC.model_copy(update={"target": None}))["target"] == ""


def test_the_default_json_body_summarises_the_incident() -> None:
    body = render(NotificationFormat.json, None, None, values())
    assert body == {
        "source": "firebreak", "event": "Contained",
        "incident": {"namespace": "shop", "name": "miner"}, "severity": "critical",
        "title": 'Miner "x" & <y>', "target": "Pod shop/web-1",
        "playbook": "firebreak-system/crypto", "phase": "Contained",
        "message": '[critical] Contained: shop/miner (Miner "x" & <y>): 2 of 2 steps applied',
        "time": "2025-03-01T12:00:01.500000Z"}


def test_a_body_template_is_filled_in_its_strings_only() -> None:
    template = {"routing_key": "abc", "payload": {"summary": "${message}", "sev": "${severity}",
                                                  "tags": ["${source}", 3, None, True]},
                "${title}": "keys stay", "price": "$$5"}
    body = render(NotificationFormat.json, "${title}!", template, values())
    assert body == {"routing_key": "abc",
                    "payload": {"summary": 'Miner "x" & <y>!', "sev": "critical",
                                "tags": ["alertmanager", 3, None, True]},
                    "${title}": "keys stay", "price": "$5"}
    # Whatever the title holds, the document is what the template says.
    assert json.loads(json.dumps(body)) == body


def test_slack_gets_the_message_as_text() -> None:
    assert render(NotificationFormat.slack, None, {"ignored": "x"}, values()) == {
        "text": '[critical] Contained: shop/miner (Miner "x" & <y>): 2 of 2 steps applied'}
    assert render(NotificationFormat.slack, "${incident} is ${phase}", None, values()) == {
        "text": "shop/miner is Contained"}
    assert render(NotificationFormat.slack, None, None, values(detail="step tell"),
                  STEP_MESSAGE) == {"text": '[critical] shop/miner (Miner "x" & <y>): step tell'}


@pytest.mark.parametrize(("message", "body", "problem"), [
    ("${incident} ${time}", {"a": ["${message}", {"b": "$detail"}]}, None),
    ("$$100", None, None),
    ("${message}", None, "'${message}' uses unknown placeholders message; known: incident"),
    (None, {"a": {"b": ["${nope}", "${zzz}"]}}, "'${nope}' uses unknown placeholders nope"),
    ("100$", None, "'100$' is not a valid template: write $$ for a dollar sign"),
    (None, {"a": "${"}, "'${' is not a valid template"),
])
def test_templates_are_checked_when_the_playbook_is(message: str | None,
                                                    body: dict[str, Any] | None,
                                                    problem: str | None) -> None:
    found = template_problem(message, body)
    assert (found is None) if problem is None else (found or "").startswith(problem), found
    step = {"secretRef": {"name": "hook"}, **({"message": message} if message else {}),
            **({"body": body} if body else {})}
    if problem is None:
        StepParams.model_validate(step)
    else:
        with pytest.raises(ValidationError):
            StepParams.model_validate(step)
        with pytest.raises(ValidationError):
            PlaybookNotification.model_validate({"name": "n", "events": ["Contained"], **step})


def test_notification_names_are_unique_in_a_playbook() -> None:
    hook = {"name": "n", "events": ["Contained"], "secretRef": {"name": "hook"}}
    step = {"name": "s", "action": "snapshot"}
    ResponsePlaybookSpec.model_validate({"steps": [step], "notifications": [hook]})
    with pytest.raises(ValidationError, match="notification names must be unique"):
        ResponsePlaybookSpec.model_validate({"steps": [step], "notifications": [hook, hook]})
