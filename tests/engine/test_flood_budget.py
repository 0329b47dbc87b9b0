"""A flood beyond the budget waits, visibly, and acts when a slot frees."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from firebreak.budget import Budget
from firebreak.engine import Engine, RetryLater
from tests.engine.recorder import Crash, Recorder
from tests.engine.world import (
    NS,
    Clock,
    add_app,
    add_incident,
    add_nodes,
    condition,
    playbook,
    states,
    status,
    step,
)

LABEL = step("mark", "label", labels={"flagged": "yes"})


EngineFactory = Callable[..., Engine]


@pytest.fixture(autouse=True)
def world(api: Recorder) -> None:
    add_nodes(api, "node-a")
    add_app(api)


def test_beyond_the_cluster_budget_an_incident_waits_throttled_then_acts(
        api: Recorder, clock: Clock, make_engine: EngineFactory) -> None:
    responder = make_engine(budget=Budget(2))
    book = playbook("mark", LABEL)
    for name in ("one", "two", "three"):
        add_incident(api, name)
    responder.reconcile(NS, "one", [book])
    clock.advance(10)
    responder.reconcile(NS, "two", [book])
    clock.advance(10)
    with pytest.raises(RetryLater) as waiting:
        responder.reconcile(NS, "three", [book])

    assert waiting.value.delay == 40  # when "one" leaves the last minute
    assert status(api, "three")["phase"] == "Throttled"
    assert states(api, "three") == {"mark": "Pending"}
    throttled = condition(api, "Contained", "three")
    assert throttled["reason"] == "BudgetExhausted"
    assert "the budget cluster-wide is 2 per minute" in throttled["message"]
    (event,) = [e for e in api.all("events", NS) if e["reason"] == "BudgetExhausted"]
    assert event["type"] == "Warning"

    clock.advance(39)
    with pytest.raises(RetryLater):
        responder.reconcile(NS, "three", [book])
    assert len([e for e in api.all("events", NS) if e["reason"] == "BudgetExhausted"]) == 1
    clock.advance(1)
    responder.reconcile(NS, "three", [book])
    assert status(api, "three")["phase"] == "Contained"


def test_a_playbook_budget_holds_back_its_own_incidents(
        api: Recorder, make_engine: EngineFactory) -> None:
    responder = make_engine(budget=Budget(0))
    strict = playbook("strict", LABEL, budget={"perMinute": 1})
    add_incident(api, "one")
    add_incident(api, "two")
    responder.reconcile(NS, "one", [strict])
    with pytest.raises(RetryLater):
        responder.reconcile(NS, "two", [strict])
    assert status(api, "two")["phase"] == "Throttled"
    assert "for playbook firebreak-system/strict is 1 per minute" in condition(
        api, "Contained", "two")["message"]


def test_an_incident_that_began_before_a_crash_resumes_whatever_the_budget(
        api: Recorder, clock: Clock, make_engine: EngineFactory) -> None:
    responder = make_engine(budget=Budget(1))
    book = playbook("mark", LABEL, step("stop", "scaleDown"))
    add_incident(api, "one")
    add_incident(api, "two")
    api.crash_after = len(api.writes) + 2  # an Event, then the first decision: dies
    with pytest.raises(Crash):
        responder.reconcile(NS, "one", [book])
    api.crash_after = None
    assert states(api, "one") == {"mark": "Running", "stop": "Pending"}
    with pytest.raises(RetryLater):
        responder.reconcile(NS, "two", [book])  # "one" spent the minute's budget
    responder.reconcile(NS, "one", [book])
    assert status(api, "one")["phase"] == "Contained"
