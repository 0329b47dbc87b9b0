"""A crash between any two writes is harmless.

The reference run goes through without interruption. Then, for every n, the same
world is run again with a crash right after the n-th write has landed (the caller
never sees the answer, as when the process is killed mid-request), and a fresh
engine reconciles the stored incident. The world must end exactly as in the
reference run, through exactly the same changes to workloads: nothing applied
twice, nothing missed, and a step found Running finished from its recorded
decision (the scale-down remembers 3 replicas, not the 0 it had set).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from firebreak.engine import Engine
from firebreak.isolation import quarantine_label
from tests.engine.recorder import Crash, Recorder
from tests.engine.world import (
    NS,
    Clock,
    add_app,
    add_incident,
    add_nodes,
    incident,
    playbook,
    status,
    step,
)

BOOK = playbook(
    "everything",
    step("evidence", "snapshot", on_failure="continue"),
    step("isolate", "isolateNetwork", detach=True),
    step("mark", "label", labels={"flagged": "yes", "team": "security"}),
    step("cordon", "cordonNode"),
    step("stop", "scaleDown"),
)
WORKLOAD_RESOURCES = ("pods", "nodes", "deployments", "networkpolicies", "secrets")
EngineFactory = Callable[[Recorder], Engine]


def build(clock: Clock) -> Recorder:
    api = Recorder(clock=clock)
    add_nodes(api, "node-a", "node-b", "node-c")
    add_app(api)
    api.logs[("web-5d9c-0", "app", "")] = "stratum+tcp://pool.example:3333\n"
    add_incident(api)
    return api


def resolve(api: Recorder) -> None:
    api.objects[("securityincidents", NS, "miner")]["spec"]["resolution"] = {"reason": "over"}


def changes(api: Recorder) -> list[tuple[str, str, str]]:
    """The writes that changed the world outside the incident (Events aside)."""
    return [(w.what, str(w.subresource), json.dumps(w.body, sort_keys=True))
            for w in api.effective(*WORKLOAD_RESOURCES)]


def world(api: Recorder) -> dict[str, Any]:
    """Every object but the incident and Events, without the fields the API server
    stamps anew on each write."""
    result = {}
    for (resource, namespace, name), obj in api.objects.items():
        if resource in ("events", "securityincidents"):
            continue
        obj = json.loads(json.dumps(obj))
        for stamp in ("resourceVersion", "generation", "uid"):
            obj["metadata"].pop(stamp, None)
        result[f"{resource}/{namespace}/{name}"] = obj
    return result


def outcome(api: Recorder) -> dict[str, Any]:
    """Status as it matters after the run. A step reverted before the crash says so
    again in other words ("already at 3 replicas"): its message is left out. An
    excluded policy's version is the one the API server stamped, which differs between
    runs as ``world`` leaves out."""
    found = status(api)
    actions = [{k: v for k, v in a.items() if not (k == "message" and a["state"] == "Reverted")}
               for a in found["actions"]]
    for action in actions:
        for excluded in (action.get("revert") or {}).get("excluded") or ():
            excluded.pop("resourceVersion", None)
    return {"phase": found["phase"], "actions": actions, "conditions": found["conditions"]}


@pytest.fixture
def engine_for(clock: Clock) -> EngineFactory:
    from functools import partial

    from firebreak.actions import registry
    from firebreak.config import OperatorConfig
    from firebreak.events import post_event

    def make(api: Recorder) -> Engine:
        kube = api.kube()
        return Engine(kube=kube, config=OperatorConfig(namespace="firebreak-system"),
                      actions=registry(), emit=partial(post_event, kube), clock=clock)

    return make


def contain(api: Recorder, engine_for: EngineFactory) -> None:
    engine_for(api).reconcile(NS, "miner", [BOOK])


def revert(api: Recorder, engine_for: EngineFactory) -> None:
    engine_for(api).reconcile(NS, "miner", [BOOK])


def release(api: Recorder, engine_for: EngineFactory) -> None:
    engine_for(api).release(NS, "miner", incident(api))


def crash_everywhere(engine_for: EngineFactory, clock: Clock,
                     prepare: Callable[[Recorder], None],
                     act: Callable[[Recorder, EngineFactory], None]) -> tuple[int, int]:
    """Run ``act`` once to the end, then once per write with a crash after that
    write; returns (writes in the reference run, crash points checked)."""

    def fresh() -> Recorder:
        api = build(clock)
        prepare(api)
        api.writes.clear()
        return api

    reference = fresh()
    act(reference, engine_for)
    total = len(reference.writes)
    assert total > 0
    for n in range(1, total + 1):
        api = fresh()
        api.crash_after = n
        with pytest.raises(Crash):
            act(api, engine_for)
        assert len(api.writes) == n
        api.crash_after = None
        act(api, engine_for)  # a fresh engine, from what was stored
        context = f"crash after write {n}: {api.writes[n - 1].what}"
        assert changes(api) == changes(reference), context
        assert world(api) == world(reference), context
        if api.get("securityincidents", NS, "miner") is not None and act is not release:
            assert outcome(api) == outcome(reference), context
    return total, total


def test_containment_survives_a_crash_after_every_write(engine_for: EngineFactory,
                                                        clock: Clock) -> None:
    total, checked = crash_everywhere(engine_for, clock, lambda api: None, contain)
    assert checked == total >= 12


def test_resolution_survives_a_crash_after_every_write(engine_for: EngineFactory,
                                                       clock: Clock) -> None:
    def contained(api: Recorder) -> None:
        contain(api, engine_for)
        resolve(api)

    crash_everywhere(engine_for, clock, contained, revert)


def test_release_on_deletion_survives_a_crash_after_every_write(engine_for: EngineFactory,
                                                                clock: Clock) -> None:
    crash_everywhere(engine_for, clock, lambda api: contain(api, engine_for), release)


def test_a_running_step_is_finished_from_its_record(engine_for: EngineFactory,
                                                    clock: Clock) -> None:
    """The crash lands after the scale-down was written but before its outcome was."""
    api = build(clock)
    reference = build(clock)
    contain(reference, engine_for)
    scale_patch = next(i for i, w in enumerate(reference.writes, 1)
                       if w.resource == "deployments")
    api.crash_after = scale_patch
    with pytest.raises(Crash):
        contain(api, engine_for)
    stored = status(api)["actions"][4]
    assert (stored["state"], stored["revert"]["previousReplicas"]) == ("Running", 3)
    assert api.get("deployments", NS, "web")["spec"]["replicas"] == 0  # type: ignore[index]

    api.crash_after = None
    before, requests = len(api.writes), len(api.requests)
    engine_for(api).reconcile(NS, "miner", [BOOK], body=incident(api))
    assert status(api)["actions"][4]["state"] == "Applied"
    assert status(api)["actions"][4]["revert"]["previousReplicas"] == 3
    assert [w for w in api.writes[before:] if w.resource == "deployments"] == []
    # Applied again from the record: read the scale, find it done, write nothing.
    assert [r for r in api.requests[requests:] if r[1].endswith("/scale")] == [
        ("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/web/scale")]


def test_stale_bodies_do_not_apply_a_step_twice(engine_for: EngineFactory,
                                                clock: Clock) -> None:
    """A body older than what was stored (a watch lagging behind, a second replica):
    its first write fails on the resourceVersion precondition, the run starts over
    from the stored record, and the world changes once."""
    api = build(clock)
    stale = incident(api)
    contain(api, engine_for)
    once = changes(api)
    engine_for(api).reconcile(NS, "miner", [BOOK], body=stale)
    assert changes(api) == once
    assert status(api)["phase"] == "Contained"


# --- the common path: one quarantine, its decision written with its outcome -----------

COMMON = playbook("common", step("isolate", "isolateNetwork"))


def running(book: dict[str, Any]) -> Callable[[Recorder, EngineFactory], None]:
    """A fresh engine's reconciliation of the incident with this playbook alone."""

    def act(api: Recorder, engine_for: EngineFactory) -> None:
        engine_for(api).reconcile(NS, "miner", [book])

    return act


contain_common = running(COMMON)


def test_a_quarantine_decided_and_applied_before_any_write_survives_every_crash(
        engine_for: EngineFactory, clock: Clock) -> None:
    """The policy and the label land before the first status write: a crash after
    either leaves no record, and the next run plans the quarantine again, finds it in
    place (its own policy, by the incident's UID; the label already on) and records
    it, changing nothing twice."""
    total, checked = crash_everywhere(engine_for, clock, lambda api: None, contain_common)
    assert checked == total >= 3
    reference = build(clock)
    contain_common(reference, engine_for)
    assert [w.what for w in reference.writes if w.resource != "events"][:3] == [
        "create networkpolicies shop/firebreak-quarantine-miner",
        "patch pods shop/web-5d9c-0",
        "patch securityincidents/status shop/miner",
    ]


def test_resolving_a_quarantine_recorded_after_a_replay_releases_everything(
        engine_for: EngineFactory, clock: Clock) -> None:
    """A crash after the label, before any record; the replay records the quarantine,
    and resolution then takes the policy and the label away as if nothing happened."""
    reference = build(clock)
    contain_common(reference, engine_for)
    api = build(clock)
    api.crash_after = 2  # the policy and the label are there, no status
    with pytest.raises(Crash):
        contain_common(api, engine_for)
    assert "status" not in incident(api) or not incident(api)["status"].get("actions")
    api.crash_after = None
    contain_common(api, engine_for)
    assert outcome(api) == outcome(reference)
    reference_labels = dict(reference.get("pods", NS, "web-5d9c-0")["metadata"]["labels"])
    for done in (api, reference):
        resolve(done)
        contain_common(done, engine_for)
    assert status(api)["phase"] == status(reference)["phase"] == "Resolved"
    assert world(api) == world(reference)
    assert api.get("networkpolicies", NS, "firebreak-quarantine-miner") is None
    pod = api.get("pods", NS, "web-5d9c-0")
    assert pod is not None and quarantine_label("miner") not in pod["metadata"]["labels"]
    assert quarantine_label("miner") in reference_labels  # what the check would miss


def test_a_stale_body_replays_a_quarantine_without_changing_anything(
        engine_for: EngineFactory, clock: Clock) -> None:
    """A body from before the record (a lagging watch, a second replica): the replay
    finds the policy its own and the label on, writes no change, and its status write
    fails on the precondition; the run then starts over from the record."""
    api = build(clock)
    stale = incident(api)
    contain_common(api, engine_for)
    once, recorded = changes(api), status(api)
    engine_for(api).reconcile(NS, "miner", [COMMON], body=stale)
    assert changes(api) == once
    assert status(api) == recorded


def test_a_quarantine_after_an_unwritten_outcome_is_written_before_it_is_applied(
        engine_for: EngineFactory, clock: Clock) -> None:
    """The snapshot's outcome is not yet on record when the quarantine comes: the
    quarantine's decision is written first (with that outcome), or a crash would leave
    the snapshot Running, to be taken again."""
    book = playbook("evidence-first", step("evidence", "snapshot"),
                    step("isolate", "isolateNetwork"))
    contain_after_snapshot = running(book)
    total, checked = crash_everywhere(engine_for, clock, lambda api: None,
                                      contain_after_snapshot)
    assert checked == total
    reference = build(clock)
    contain_after_snapshot(reference, engine_for)
    before_policy = reference.writes[:next(
        i for i, w in enumerate(reference.writes) if w.resource == "networkpolicies")]
    recorded = [w.body["status"] for w in before_policy if w.resource == "securityincidents"]
    assert [a["state"] for a in recorded[-1]["actions"]] == ["Applied", "Running"]


def open_to_web(api: Recorder) -> None:
    """Another team's policy letting all traffic in to the app's pods."""
    api.add({"kind": "NetworkPolicy", "metadata": {"name": "open", "namespace": NS},
             "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                      "policyTypes": ["Ingress"], "ingress": [{}]}})


@pytest.mark.parametrize("book, prepare", [
    (playbook("detach", step("isolate", "isolateNetwork", detach=True)), lambda api: None),
    (COMMON, open_to_web),
], ids=["detaching", "excluding"])
def test_a_quarantine_whose_plan_a_replay_would_not_find_again_is_written_first(
        engine_for: EngineFactory, clock: Clock, book: dict[str, Any],
        prepare: Callable[[Recorder], None]) -> None:
    """Detaching records the labels the pod had; excluding records other teams'
    policies as they were. After the first apply neither is there to be planned again,
    so the decision is on record before anything changes, and every crash is
    harmless."""
    act = running(book)
    crash_everywhere(engine_for, clock, prepare, act)
    reference = build(clock)
    prepare(reference)
    act(reference, engine_for)
    first = next(w for w in reference.writes if w.resource != "events")
    assert first.what == "patch securityincidents/status shop/miner"
    assert [a["state"] for a in first.body["status"]["actions"]] == ["Running"]
