"""Intake over the recording API: a signal is recorded whatever its target says, once
per occurrence, within the caller's deadline.

A missing namespace reroutes the incident to the operator's namespace (target kept,
the reason annotated); names Kubernetes cannot hold are dropped at intake; a retry of
a delivery whose answer was lost is not counted twice; no API call outlives the
deadline.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest

from firebreak.api import signal_fields
from firebreak.config import OperatorConfig
from firebreak.intake import SIGNAL_TIMES_LIMIT, TARGET_PROBLEM, Deadline, Intake
from firebreak.kube import NotFound, TemporaryApiError
from firebreak.sources.signal import Signal, SignalStatus, incident_name
from tests.engine.recorder import Crash, Recorder
from tests.engine.world import (
    NS,
    OPERATOR_NS,
    START,
    Clock,
    add_app,
    alert_signal,
    incident,
    signals,
    status,
)

FIRED = START - dt.timedelta(minutes=1)


def signal(pod: str = "web-5d9c-0", namespace: str = NS, **changes: Any) -> Signal:
    return alert_signal(pod, namespace, **{"time": FIRED, **changes})


NAME = incident_name(signal())


@pytest.fixture
def intake(api: Recorder, clock: Clock) -> Intake:
    api.strict_namespaces = True
    for namespace in (NS, OPERATOR_NS):
        api.add({"kind": "Namespace", "metadata": {"name": namespace}})
    add_app(api)
    return Intake(api.kube(), OperatorConfig(namespace=OPERATOR_NS), clock=clock, retry_for=0)


# --- a namespace that does not exist --------------------------------------------------


def test_a_missing_namespace_is_recorded_in_the_operators_namespace(
        intake: Intake, api: Recorder) -> None:
    recorded = intake.record(signal(namespace="repro-missing", pod="web-1"))
    assert (recorded.namespace, recorded.name, recorded.outcome) == (
        OPERATOR_NS, NAME, "created")
    stored = incident(api, NAME, namespace=OPERATOR_NS)
    assert stored["spec"]["target"] == {"kind": "Pod", "namespace": "repro-missing",
                                        "name": "web-1"}
    assert stored["metadata"]["annotations"][TARGET_PROBLEM] == \
        "namespace repro-missing does not exist"
    assert signal_fields(stored)["signalCount"] == 1
    # Only the create in the missing namespace was refused; nothing else is left.
    assert api.written() == [f"create securityincidents {OPERATOR_NS}/{NAME}"]


def test_the_next_firing_counts_on_the_same_incident(intake: Intake, api: Recorder,
                                                     clock: Clock) -> None:
    intake.record(signal(namespace="repro-missing"))
    clock.advance(60)
    again = intake.record(signal(namespace="repro-missing", time=FIRED + dt.timedelta(hours=1)))
    assert (again.namespace, again.name, again.outcome) == (OPERATOR_NS, NAME, "updated")
    assert status(api, NAME, namespace=OPERATOR_NS)["signalCount"] == 2
    assert [i["metadata"]["name"] for i in api.all("securityincidents")] == [NAME]


def test_its_resolved_signal_finds_it_there(intake: Intake, api: Recorder) -> None:
    intake.record(signal(namespace="repro-missing"))
    api.add({"kind": "ResponsePlaybook", "metadata": {"name": "auto", "namespace": OPERATOR_NS},
             "spec": {"release": "onSignalResolved", "steps": []}})
    api.objects[("securityincidents", OPERATOR_NS, NAME)]["status"] = {"playbook": {
        "name": "auto", "namespace": OPERATOR_NS}}
    resolved = intake.record(signal(namespace="repro-missing", status=SignalStatus.resolved))
    assert (resolved.namespace, resolved.outcome) == (OPERATOR_NS, "released")


def test_a_404_for_another_reason_is_not_taken_for_a_missing_namespace(
        intake: Intake, api: Recorder) -> None:
    api.fail("create", "securityincidents", 404,
             "the server could not find the requested resource")
    with pytest.raises(NotFound):
        intake.record(signal())
    assert api.writes == []


# --- names Kubernetes cannot hold --------------------------------------------------------


@pytest.mark.parametrize(("namespace", "pod", "problem"), [
    (NS, ".", 'Pod name "." is not a valid object name'),
    (NS, "..", 'Pod name ".." is not a valid object name'),
    ("UPPER_case", "web-1", 'namespace "UPPER_case" is not a valid namespace name'),
    ("%2e%2e", "web-1", 'namespace "%2e%2e" is not a valid namespace name'),
    (NS, "wéb", 'Pod name "w\\u00e9b" is not a valid object name'),
    (NS, "a" * 254, "Pod name \"aaaa"),
])
def test_an_impossible_target_is_dropped_and_the_reason_kept(
        intake: Intake, api: Recorder, namespace: str, pod: str, problem: str) -> None:
    # model_copy skips validation: intake checks the signal again.
    recorded = intake.record(signal(namespace=namespace, pod=pod))
    assert recorded.namespace == OPERATOR_NS
    stored = incident(api, recorded.name, namespace=OPERATOR_NS)
    assert "target" not in stored["spec"]
    assert stored["metadata"]["annotations"][TARGET_PROBLEM].startswith(problem)
    # No pod or workload was read for it: the decision needed no API call.
    assert not [p for _, p in api.requests if "/pods/" in p or "/replicasets/" in p]


def test_every_stored_string_is_bounded(intake: Intake, api: Recorder) -> None:
    huge = signal(alert_name="A" * 300_000, title="t" * 300_000, description="d" * 300_000,
                  fingerprint="f" * 300_000,
                  labels={f"k{i}-" + "x" * 1000: "\ud800" * 10_000 for i in range(200)})
    recorded = intake.record(huge)
    spec = incident(api, recorded.name)["spec"]
    assert len(json.dumps(spec)) < 40_000  # Kopf's copy in an annotation fits many times
    assert spec["fingerprint"].startswith("sha256:")
    json.dumps(spec, ensure_ascii=False).encode()  # valid Unicode throughout
    again = intake.record(huge)  # the same signal, the same incident
    assert (again.name, again.outcome) == (recorded.name, "repeated")


# --- a delivery counted once ---------------------------------------------------------------


def test_a_repeated_occurrence_moves_last_seen_but_is_not_counted(
        intake: Intake, api: Recorder, clock: Clock) -> None:
    intake.record(signal())
    clock.advance(30)
    again = intake.record(signal())
    assert again.outcome == "repeated"
    assert status(api, NAME) == {"signalCount": 1, "firstSeen": "2025-03-01T12:00:00Z",
                                 "lastSeen": "2025-03-01T12:00:30Z",
                                 "signalTimes": ["2025-03-01T11:59:00Z"]}
    later = intake.record(signal(time=FIRED + dt.timedelta(hours=2)))
    assert later.outcome == "updated"
    assert status(api, NAME)["signalCount"] == 2


def test_signals_without_a_time_count_every_delivery(intake: Intake, api: Recorder) -> None:
    intake.record(signal(time=None))
    assert intake.record(signal(time=None)).outcome == "updated"
    assert status(api, NAME)["signalCount"] == 2
    assert "signalTimes" not in status(api, NAME)


def test_the_times_kept_are_bounded(intake: Intake, api: Recorder) -> None:
    for minute in range(SIGNAL_TIMES_LIMIT + 4):
        intake.record(signal(time=FIRED + dt.timedelta(minutes=minute)))
    kept = status(api, NAME)["signalTimes"]
    assert len(kept) == SIGNAL_TIMES_LIMIT
    assert kept[-1] == "2025-03-01T12:18:00Z"
    assert status(api, NAME)["signalCount"] == SIGNAL_TIMES_LIMIT + 4


def test_a_retry_after_a_lost_answer_is_not_counted_twice(intake: Intake, api: Recorder) -> None:
    # The create lands; the process (or the sender's connection) dies before the
    # answer: the sender retries.
    api.crash_after = 1
    with pytest.raises(Crash):
        intake.record(signal())
    api.crash_after = None
    assert intake.record(signal()).outcome == "repeated"
    assert signals(api, NAME)["signalCount"] == 1


def test_a_retry_after_a_failed_count_counts_once(intake: Intake, api: Recorder,
                                                  clock: Clock) -> None:
    intake.record(signal())
    later = signal(time=FIRED + dt.timedelta(hours=1))
    api.fail("patch", "securityincidents", 503, "etcdserver: request timed out", times=1,
             subresource="status")
    with pytest.raises(TemporaryApiError):
        intake.record(later)  # not counted: the sender gets 503
    assert signals(api, NAME)["signalCount"] == 1
    assert intake.record(later).outcome == "updated"
    assert status(api, NAME)["signalCount"] == 2


# --- the deadline -----------------------------------------------------------------------


def test_nothing_is_asked_once_the_deadline_passed(intake: Intake, api: Recorder) -> None:
    deadline = Deadline(0.05)
    time.sleep(0.06)
    with pytest.raises(TemporaryApiError, match=r"did not answer within 0.05s"):
        intake.record(signal(), deadline)
    assert api.requests == []


def test_retries_stop_at_the_deadline(api: Recorder, clock: Clock) -> None:
    api.fail("*", "securityincidents", 503, "etcdserver: leader changed")
    patient = Intake(api.kube(), OperatorConfig(namespace=OPERATOR_NS), clock=clock,
                     retry_for=30)
    started = time.monotonic()
    with pytest.raises(TemporaryApiError):
        patient.record(signal(), Deadline(0.5))
    assert time.monotonic() - started < 1.5
    assert api.writes == []
