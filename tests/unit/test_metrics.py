"""The metrics module: what a status write counts, the incident gauges, the handlers'
queue, and the exposition served over HTTP on loopback."""

from __future__ import annotations

import datetime as dt
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from firebreak import metrics
from firebreak.workqueue import WorkQueue

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def step(action: str, state: str) -> dict[str, str]:
    return {"step": action, "action": action, "state": state}


def test_a_status_write_counts_the_steps_it_finished() -> None:
    before = {"actions": [step("isolateNetwork", "Running"), step("snapshot", "Pending")]}
    after = {"actions": [step("isolateNetwork", "Applied"), step("snapshot", "Failed")]}
    applied = value("firebreak_steps_total", action="isolateNetwork", outcome="applied")
    failed = value("firebreak_steps_total", action="snapshot", outcome="failed")
    metrics.observe_status(before, after)
    assert value("firebreak_steps_total", action="isolateNetwork", outcome="applied") == \
        applied + 1
    assert value("firebreak_steps_total", action="snapshot", outcome="failed") == failed + 1
    # Written again unchanged: nothing more is counted.
    metrics.observe_status(after, after)
    assert value("firebreak_steps_total", action="isolateNetwork", outcome="applied") == \
        applied + 1


@pytest.mark.parametrize(("state", "metric", "outcome"), [
    ("Planned", "firebreak_steps_total", "planned"),
    ("Refused", "firebreak_steps_total", "refused"),
    ("Reverted", "firebreak_reverts_total", "reverted"),
    ("RevertFailed", "firebreak_reverts_total", "failed"),
])
def test_each_final_state_has_its_outcome(state: str, metric: str, outcome: str) -> None:
    before = value(metric, action="label", outcome=outcome)
    # A step that first appears already finished (a status written in one go) counts too.
    metrics.observe_status({}, {"actions": [step("label", state)]})
    assert value(metric, action="label", outcome=outcome) == before + 1


@pytest.mark.parametrize("state", ["Pending", "Running", "Reverting", "Skipped"])
def test_states_on_the_way_count_nothing(state: str) -> None:
    def counted() -> list[float]:
        return [value(m, action="cordonNode", outcome=o)
                for m in ("firebreak_steps_total", "firebreak_reverts_total")
                for o in ("applied", "planned", "refused", "failed", "reverted")]

    before = counted()
    metrics.observe_status({}, {"actions": [step("cordonNode", state)]})
    assert counted() == before


def test_time_to_contain_is_observed_once_per_incident_under_its_playbook() -> None:
    playbook = {"namespace": "firebreak-system", "name": "ttc-test"}
    label = "firebreak-system/ttc-test"
    contained = {"playbook": playbook, "timeToContainSeconds": 42.5}
    metrics.observe_status({"playbook": playbook}, contained)
    metrics.observe_status(contained, {**contained, "phase": "Contained"})
    assert value("firebreak_time_to_contain_seconds_count", playbook=label) == 1
    assert value("firebreak_time_to_contain_seconds_sum", playbook=label) == 42.5
    assert value("firebreak_time_to_contain_seconds_bucket", playbook=label, le="30.0") == 0
    assert value("firebreak_time_to_contain_seconds_bucket", playbook=label, le="60.0") == 1


def test_new_deliveries_are_counted_by_event_and_outcome() -> None:
    sent = {"notification": "n", "event": "Contained", "since": "t1", "state": "Sent"}
    failed = {"notification": "n", "event": "Resolved", "since": "t2", "state": "Failed"}
    before = (value("firebreak_notifications_total", event="Contained", outcome="sent"),
              value("firebreak_notifications_total", event="Resolved", outcome="failed"))
    metrics.observe_status({"deliveries": [sent]}, {"deliveries": [sent, failed]})
    metrics.observe_status({}, {"deliveries": [sent]})
    assert (value("firebreak_notifications_total", event="Contained", outcome="sent"),
            value("firebreak_notifications_total", event="Resolved", outcome="failed")) == (
        before[0] + 1, before[1] + 1)


def incident(uid: str, phase: str | None, source: str = "falco", first: str | None = None,
             isolated: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if first:
        status["firstSeen"] = first
    if isolated:
        status["conditions"] = [{"type": "Isolated", "status": isolated}]
    return {"metadata": {"uid": uid, "namespace": "shop", "name": uid,
                         "creationTimestamp": "2025-03-01T11:00:00Z"},
            "spec": {"source": source}, "status": status}


def samples(gauges: metrics.IncidentGauges) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in gauges.collect() for s in family.samples}


def test_incident_gauges_follow_the_watch() -> None:
    gauges = metrics.IncidentGauges(clock=lambda: NOW)
    gauges.observe("ADDED", incident("a", None, first="2025-03-01T11:50:00Z"))
    gauges.observe("ADDED", incident("b", "Contained", isolated="True"))
    gauges.observe("MODIFIED", incident("c", "Failed", "alertmanager", isolated="False",
                                        first="2025-03-01T11:58:00Z"))
    gauges.observe(None, incident("d", "Resolved", "nonsense"))
    gauges.observe("ADDED", incident("e", "AwaitingApproval"))  # no firstSeen: creation
    gauges.observe("ADDED", incident("f", "Throttled", first="2025-03-01T11:59:00Z"))
    found = samples(gauges)
    assert found == {
        ("firebreak_incidents", (("phase", "AwaitingApproval"), ("source", "falco"))): 1,
        ("firebreak_incidents", (("phase", "Contained"), ("source", "falco"))): 1,
        ("firebreak_incidents", (("phase", "Failed"), ("source", "alertmanager"))): 1,
        ("firebreak_incidents", (("phase", "Pending"), ("source", "falco"))): 1,
        ("firebreak_incidents", (("phase", "Resolved"), ("source", "other"))): 1,
        ("firebreak_incidents", (("phase", "Throttled"), ("source", "falco"))): 1,
        ("firebreak_incidents_isolation_defeated", ()): 1,
        ("firebreak_oldest_uncontained_incident_seconds", ()): 3600.0,
    }
    gauges.observe("DELETED", incident("e", None))
    gauges.observe("DELETED", incident("f", None))
    gauges.observe("MODIFIED", incident("c", "Contained", "alertmanager", isolated="True"))
    found = samples(gauges)
    assert found[("firebreak_incidents_isolation_defeated", ())] == 0
    assert found[("firebreak_oldest_uncontained_incident_seconds", ())] == 600.0
    gauges.forget_all()
    assert samples(gauges) == {("firebreak_incidents_isolation_defeated", ()): 0,
                               ("firebreak_oldest_uncontained_incident_seconds", ()): 0.0}


def test_the_reconcile_queue_depth_is_the_work_there_is_now() -> None:
    now = [100.0]
    queue: WorkQueue[str] = WorkQueue(clock=lambda: now[0])
    metrics.queue_depth("reconcile", queue.depth)
    queue.add("a")
    queue.add("b")
    queue.add("a")
    queue.add("later", after=10)  # an approval's next poll: not work yet
    assert value("firebreak_queue_depth", queue="reconcile") == 2
    assert queue.take() == "a"
    assert value("firebreak_queue_depth", queue="reconcile") == 2  # one in hand, one ready
    queue.done("a")
    assert value("firebreak_queue_depth", queue="reconcile") == 1
    now[0] += 10
    assert queue.take() == "b"
    assert queue.take() == "later"
    queue.done("b")
    queue.done("later")
    assert value("firebreak_queue_depth", queue="reconcile") == 0


def test_metrics_are_served_over_http_with_their_help() -> None:
    metrics.api_retry(503)
    metrics.api_retry(None)
    metrics.signal("falco", "created")
    metrics.signal("somewhere", "created")
    server = metrics.Server("127.0.0.1:0")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        server.stop()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("firebreak_time_to_contain_seconds", "firebreak_steps", "firebreak_reverts",
                 "firebreak_notifications", "firebreak_signals", "firebreak_webhook_requests",
                 "firebreak_webhook_request_duration_seconds", "firebreak_queue_depth",
                 "firebreak_api_retries", "firebreak_incidents",
                 "firebreak_incidents_isolation_defeated",
                 "firebreak_oldest_uncontained_incident_seconds", "process_resident_memory_bytes"):
        assert name in families, name
        assert families[name].documentation, name
    retries = {s.labels["code"]: s.value for s in families["firebreak_api_retries"].samples
               if s.name.endswith("_total")}
    assert retries["503"] >= 1 and retries["0"] >= 1
    signals = {(s.labels["source"], s.labels["outcome"])
               for s in families["firebreak_signals"].samples}
    assert {("falco", "created"), ("other", "created")} <= signals
