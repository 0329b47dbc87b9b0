"""Revert records outlive releases: what release 0.1.0 wrote still applies and reverts.

``fixtures/release-0.1.0.json`` holds worlds as release 0.1.0 left them: every object
and the incident with its status, written by that release's engine and actions
(records as plain dicts, without ``version``). "contained" worlds hold Applied
steps; "running" worlds stopped right after a step's decision was recorded, so the
step must be finished from a record that release wrote. Never regenerate the file:
it stands for incidents already stored in clusters.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from firebreak.actions import registry
from firebreak.actions.scale import ScaleDownRecord
from firebreak.api import ActionName, ResponsePlaybookSpec
from firebreak.engine import Engine
from firebreak.matching import PlaybookCandidate
from tests.engine.recorder import Recorder
from tests.engine.world import NS, add_app, add_incident, add_nodes, condition, states, status

WORLDS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "fixtures" / "release-0.1.0.json").read_text())
POD_LABELS = {"app": "web", "pod-template-hash": "5d9c", "team": "shop"}


def load(api: Recorder, name: str) -> PlaybookCandidate:
    world = WORLDS[name]
    for obj in world["objects"]:
        api.add(obj)
    book = world["playbook"]
    return PlaybookCandidate(book["namespace"], book["name"],
                             ResponsePlaybookSpec.model_validate(book["spec"]))


def old_incident(world: str) -> dict[str, Any]:
    return next(o for o in WORLDS[world]["objects"] if o["kind"] == "SecurityIncident")


def old_records() -> list[tuple[str, str, dict[str, Any]]]:
    return [(name, a["action"], a["revert"]) for name in sorted(WORLDS)
            for a in old_incident(name)["status"]["actions"] if a.get("revert")]


def assert_restored(api: Recorder) -> None:
    """The world as it was before the incident (the evidence aside)."""
    for pod in api.all("pods", NS):
        assert pod["metadata"]["labels"] == POD_LABELS, pod["metadata"]["name"]
        assert not pod["metadata"].get("annotations"), pod["metadata"]["name"]
    for node in api.all("nodes"):
        assert not node["spec"].get("unschedulable"), node["metadata"]["name"]
        assert node["metadata"].get("labels") in ({}, None), node["metadata"]["name"]
        assert not node["metadata"].get("annotations"), node["metadata"]["name"]
    assert api.all("networkpolicies") == []
    deployment = api.get("deployments", NS, "web")
    assert deployment is not None and deployment["spec"]["replicas"] == 3


def test_the_fixture_holds_every_record_format_of_that_release() -> None:
    kinds = {action for _, action, _ in old_records()}
    # notify came later, and keeps no revert record (a message cannot be taken back).
    assert kinds == {a.value for a in ActionName} - {ActionName.notify.value}
    assert all("version" not in record for _, _, record in old_records())


@pytest.mark.parametrize(("world", "action", "record"), old_records(),
                         ids=[f"{w}-{a}" for w, a, _ in old_records()])
def test_old_records_load_as_version_1_and_are_written_back_unchanged(
        world: str, action: str, record: dict[str, Any]) -> None:
    """Same keys, same values: a release rolled back to 0.1.0 reads new records too
    (an empty field is left out rather than written as null; that release reads the
    only one, a Node label's namespace, with ``get``)."""
    loaded = registry()[ActionName(action)].load(record)
    assert loaded.version == 1
    assert loaded.to_api() == {"version": 1, **{k: v for k, v in record.items() if v is not None}}


@pytest.mark.parametrize("world", ["pod-contained", "workload-contained", "node-contained"])
def test_contained_incidents_of_the_previous_release_revert(
        api: Recorder, engine: Engine, world: str) -> None:
    book = load(api, world)
    api.objects[("securityincidents", NS, "miner")]["spec"]["resolution"] = {"reason": "over"}
    engine.reconcile(NS, "miner", [book])
    assert status(api)["phase"] == "Resolved", status(api)
    assert set(states(api).values()) <= {"Reverted", "Applied"}  # Applied: evidence is kept
    assert_restored(api)


@pytest.mark.parametrize("step", ["evidence", "isolate", "mark", "cordon", "stop"])
def test_running_steps_of_the_previous_release_finish_then_revert(
        api: Recorder, engine: Engine, step: str) -> None:
    book = load(api, f"pod-running-{step}")
    api.logs[("web-5d9c-0", "app", "")] = "mining...\n"
    assert states(api)[step] == "Running"
    engine.reconcile(NS, "miner", [book])
    assert status(api)["phase"] == "Contained", status(api)
    assert set(states(api).values()) == {"Applied"}
    assert api.get("deployments", NS, "web")["spec"]["replicas"] == 0  # type: ignore[index]

    api.objects[("securityincidents", NS, "miner")]["spec"]["resolution"] = {"reason": "over"}
    engine.reconcile(NS, "miner", [book])
    assert status(api)["phase"] == "Resolved"
    assert_restored(api)


def test_a_running_delete_pod_of_the_previous_release_deletes_the_recorded_pod(
        api: Recorder, engine: Engine) -> None:
    book = load(api, "pod-running-kill")
    engine.reconcile(NS, "miner", [book])
    assert states(api) == {"kill": "Applied"}
    assert api.get("pods", NS, "web-5d9c-0") is None
    assert len(api.all("pods", NS)) == 2


def test_a_record_from_a_newer_release_is_refused_not_misread() -> None:
    with pytest.raises(ValueError, match="written by a newer release"):
        ScaleDownRecord.model_validate({"version": 2, "kind": "Deployment", "namespace": NS,
                                        "name": "web", "previousReplicas": 3, "replicas": 0})


def test_an_unreadable_record_fails_the_revert_with_a_reason_and_is_kept(
        api: Recorder, make_engine: Callable[..., Engine]) -> None:
    add_nodes(api, "node-a")
    add_app(api)
    broken = {"kind": "Deployment", "namespace": NS, "name": "web", "previous": 3}
    add_incident(api, resolution={"reason": "over"})
    api.objects[("securityincidents", NS, "miner")]["status"] = {"actions": [
        {"step": "stop", "action": "scaleDown", "state": "Applied", "revert": broken}]}
    make_engine().reconcile(NS, "miner", [])
    assert states(api) == {"stop": "RevertFailed"}
    message = status(api)["actions"][0]["message"]
    assert message.startswith("the scaleDown record in status is unreadable: ")
    assert "previousReplicas: Field required" in message and "previous: Extra inputs" in message
    assert status(api)["actions"][0]["revert"] == broken
    assert condition(api, "Resolved")["reason"] == "RevertFailed"


def test_an_unreadable_record_of_a_running_step_fails_the_step_and_is_kept(
        api: Recorder, make_engine: Callable[..., Engine]) -> None:
    add_nodes(api, "node-a")
    add_app(api)
    add_incident(api)
    broken = {"nodes": "node-a"}
    api.objects[("securityincidents", NS, "miner")]["status"] = {
        "conditions": old_incident("pod-running-cordon")["status"]["conditions"],
        "actions": [{"step": "cordon", "action": "cordonNode", "state": "Running",
                     "revert": broken}]}
    make_engine().reconcile(NS, "miner", [])
    assert states(api) == {"cordon": "Failed"}
    assert status(api)["actions"][0]["revert"] == broken
    assert api.written("nodes") == []
