"""An incident's way through triage and approval, as conditions and the derived phase.

Pending -> Triaging -> (Suppressed | Failed | AwaitingApproval -> Containing) ->
Contained -> Recovering -> Resolved, with ``spec.playbookRef``, manual approval and
its timeout driven by a clock the test moves, and temporary API errors.
"""

from __future__ import annotations

import pytest

from firebreak.engine import APPROVAL_POLL_SECONDS, Engine, RetryLater
from tests.engine.recorder import Recorder
from tests.engine.world import (
    NS,
    OPERATOR_NS,
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

ISOLATE = step("isolate", "isolateNetwork")
STATUS = "patch securityincidents/status shop/miner"


@pytest.fixture(autouse=True)
def world(api: Recorder) -> None:
    add_nodes(api, "node-a", "node-b")
    add_app(api)


def test_no_matching_playbook_suppresses_the_incident(api: Recorder, engine: Engine) -> None:
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook("other", ISOLATE, match={"sources": ["falco"]})])
    assert status(api)["phase"] == "Suppressed"
    assert condition(api, "Triaged")["reason"] == "NoMatchingPlaybook"
    assert "actions" not in status(api)
    assert api.written() == ["create events shop/miner.00001", STATUS]


def test_the_highest_priority_matching_playbook_answers(api: Recorder, engine: Engine) -> None:
    add_incident(api)
    engine.reconcile(NS, "miner", [
        playbook("low", step("a", "label", labels={"x": "1"}), priority=1),
        playbook("high", ISOLATE, priority=10),
        playbook("team", step("b", "label", labels={"y": "1"}), namespace="elsewhere",
                 priority=100),  # another namespace's playbook may not answer
    ])
    assert status(api)["playbook"] == {"name": "high", "namespace": OPERATOR_NS}
    assert states(api) == {"isolate": "Applied"}


@pytest.mark.parametrize("ref", [{"name": "chosen", "namespace": OPERATOR_NS},
                                 {"name": "chosen"}])
def test_playbook_ref_chooses_the_playbook_even_when_another_matches_better(
        api: Recorder, engine: Engine, ref: dict[str, str]) -> None:
    namespace = ref.get("namespace", NS)
    add_incident(api, playbookRef=ref)
    engine.reconcile(NS, "miner", [
        playbook("best", ISOLATE, priority=100),
        playbook("chosen", step("mark", "label", labels={"seen": "yes"}), namespace=namespace,
                 match={"sources": ["falco"]}),  # named: its match does not matter
    ])
    assert status(api)["playbook"] == {"name": "chosen", "namespace": namespace}
    assert states(api) == {"mark": "Applied"}
    assert api.written("networkpolicies") == []


def test_a_missing_playbook_ref_is_an_invalid_playbook(api: Recorder, engine: Engine) -> None:
    add_incident(api, playbookRef={"name": "gone", "namespace": OPERATOR_NS})
    engine.reconcile(NS, "miner", [playbook("best", ISOLATE)])
    triaged = condition(api, "Triaged")
    assert (triaged["status"], triaged["reason"]) == ("False", "InvalidPlaybook")
    assert triaged["message"] == (f"playbook {OPERATOR_NS}/gone named in spec.playbookRef "
                                  f"not found")
    assert status(api)["phase"] == "Failed"
    assert api.written("networkpolicies", "pods") == []


def test_a_playbook_ref_across_namespaces_is_refused(api: Recorder, engine: Engine) -> None:
    add_incident(api, playbookRef={"name": "theirs", "namespace": "other-team"})
    engine.reconcile(NS, "miner", [playbook("theirs", ISOLATE, namespace="other-team")])
    assert condition(api, "Triaged")["message"] == (
        "playbook other-team/theirs may only answer incidents in namespace other-team")
    assert status(api)["phase"] == "Failed"
    assert api.written("networkpolicies") == []


def test_a_playbook_that_cannot_answer_the_incident_fails_triage(api: Recorder,
                                                                 engine: Engine) -> None:
    add_incident(api, target={"kind": "Node", "name": "node-a"})
    engine.reconcile(NS, "miner", [playbook("contain", ISOLATE)])
    triaged = condition(api, "Triaged")
    assert triaged["reason"] == "InvalidPlaybook"
    assert "isolateNetwork cannot act on a Node target" in triaged["message"]
    assert status(api)["phase"] == "Failed"


def manual(on_timeout: str = "reject") -> list:  # type: ignore[type-arg]
    return [playbook("careful", ISOLATE, approval={"policy": "manual", "timeoutSeconds": 600,
                                                   "onTimeout": on_timeout})]


def test_manual_approval_waits_then_runs_when_a_person_approves(
        api: Recorder, engine: Engine, clock: Clock) -> None:
    add_incident(api)
    with pytest.raises(RetryLater) as waiting:
        engine.reconcile(NS, "miner", manual())
    assert waiting.value.delay == APPROVAL_POLL_SECONDS
    assert status(api)["phase"] == "AwaitingApproval"
    assert states(api) == {"isolate": "Pending"}
    assert api.written("networkpolicies") == []

    # Polling while nobody decided writes nothing.
    writes = len(api.writes)
    clock.advance(300)
    with pytest.raises(RetryLater):
        engine.reconcile(NS, "miner", manual())
    assert len(api.writes) == writes

    api.objects[("securityincidents", NS, "miner")]["spec"]["approval"] = {
        "decision": "approve", "by": "alice", "reason": "confirmed"}
    engine.reconcile(NS, "miner", manual())
    approved = condition(api, "Approved")
    assert (approved["reason"], approved["message"]) == ("ApprovedByPerson",
                                                         "approved by alice: confirmed")
    assert states(api) == {"isolate": "Applied"}
    assert status(api)["phase"] == "Contained"
    # Someone waited for these steps: their outcome is an Event too (without an
    # approval, the status alone says it).
    assert [e["reason"] for e in api.all("events")] == [
        "PlaybookSelected", "AwaitingApproval", "ApprovedByPerson", "StepsApplied"]


def test_a_rejection_skips_every_step(api: Recorder, engine: Engine) -> None:
    add_incident(api, approval={"decision": "reject", "by": "carol"})
    engine.reconcile(NS, "miner", manual())
    assert states(api) == {"isolate": "Skipped"}
    assert condition(api, "Approved")["reason"] == "RejectedByPerson"
    assert status(api)["phase"] == "Suppressed"
    assert api.written("networkpolicies", "pods") == []


@pytest.mark.parametrize(("on_timeout", "reason", "phase", "state"), [
    ("reject", "ApprovalTimedOut", "Suppressed", "Skipped"),
    ("approve", "ApprovedOnTimeout", "Contained", "Applied"),
])
def test_approval_timeout(api: Recorder, engine: Engine, clock: Clock, on_timeout: str,
                          reason: str, phase: str, state: str) -> None:
    add_incident(api)
    with pytest.raises(RetryLater):
        engine.reconcile(NS, "miner", manual(on_timeout))
    clock.advance(595)
    with pytest.raises(RetryLater) as waiting:
        engine.reconcile(NS, "miner", manual(on_timeout))
    assert waiting.value.delay == 5  # no later than the deadline
    clock.advance(5)
    engine.reconcile(NS, "miner", manual(on_timeout))
    assert condition(api, "Approved")["reason"] == reason
    assert status(api)["phase"] == phase
    assert states(api) == {"isolate": state}


def test_the_approval_policy_is_fixed_at_triage(
        api: Recorder, engine: Engine, clock: Clock) -> None:
    add_incident(api)
    with pytest.raises(RetryLater):
        engine.reconcile(NS, "miner", manual("reject"))
    assert status(api)["approval"] == {"policy": "manual", "timeoutSeconds": 600,
                                       "onTimeout": "reject"}
    # The playbook is edited while a person decides: a shorter timeout that approves.
    edited = [playbook("careful", ISOLATE, approval={"policy": "manual", "timeoutSeconds": 60,
                                                     "onTimeout": "approve"})]
    clock.advance(120)
    with pytest.raises(RetryLater):
        engine.reconcile(NS, "miner", edited)
    clock.advance(480)
    engine.reconcile(NS, "miner", edited)
    assert condition(api, "Approved")["reason"] == "ApprovalTimedOut"
    assert states(api) == {"isolate": "Skipped"}


def test_a_playbook_deleted_while_awaiting_approval_leaves_the_response_as_planned(
        api: Recorder, engine: Engine) -> None:
    add_incident(api)
    with pytest.raises(RetryLater):
        engine.reconcile(NS, "miner", manual())
    with pytest.raises(RetryLater):
        engine.reconcile(NS, "miner", [])
    api.objects[("securityincidents", NS, "miner")]["spec"]["approval"] = {
        "decision": "approve", "by": "alice"}
    engine.reconcile(NS, "miner", [])
    assert states(api) == {"isolate": "Applied"}


def test_a_playbook_deleted_before_an_older_record_named_its_policy_has_its_own_reason(
        api: Recorder, engine: Engine) -> None:
    add_incident(api)
    with pytest.raises(RetryLater):
        engine.reconcile(NS, "miner", manual())
    # As an incident triaged by release 0.1.0 stored it: no approval policy in status.
    del api.objects[("securityincidents", NS, "miner")]["status"]["approval"]
    engine.reconcile(NS, "miner", [])
    approved = condition(api, "Approved")
    assert (approved["reason"], approved["message"]) == (
        "PlaybookDeleted", "the playbook was deleted while awaiting approval")
    assert states(api) == {"isolate": "Skipped"}
    assert status(api)["phase"] == "Suppressed"


def test_conditions_move_their_transition_time_only_when_the_status_flips(
        api: Recorder, engine: Engine, clock: Clock) -> None:
    add_incident(api)
    with pytest.raises(RetryLater):
        engine.reconcile(NS, "miner", manual())
    waiting_since = condition(api, "Approved")["lastTransitionTime"]
    contained_since = condition(api, "Contained")["lastTransitionTime"]
    clock.advance(30)
    api.objects[("securityincidents", NS, "miner")]["spec"]["approval"] = {"decision": "approve"}
    api.objects[("securityincidents", NS, "miner")]["metadata"]["generation"] = 2
    engine.reconcile(NS, "miner", manual())
    assert waiting_since == "2025-03-01T12:00:00Z"
    assert condition(api, "Approved")["lastTransitionTime"] == "2025-03-01T12:00:30Z"
    assert condition(api, "Approved")["observedGeneration"] == 2
    assert condition(api, "Contained")["lastTransitionTime"] == "2025-03-01T12:00:30Z" \
        != contained_since
    assert condition(api, "Triaged")["lastTransitionTime"] == "2025-03-01T12:00:00Z"
    assert status(api)["observedGeneration"] == 2


@pytest.mark.usefixtures("no_retries")
def test_a_temporary_api_error_keeps_the_record_and_retries_later(
        api: Recorder, engine: Engine) -> None:
    add_incident(api)
    api.fail("create", "networkpolicies", 503, "etcd leader changed", times=1)
    book = [playbook("contain", ISOLATE)]
    with pytest.raises(RetryLater) as later:
        engine.reconcile(NS, "miner", book)
    assert later.value.delay == 5.0
    assert "503 Service Unavailable: etcd leader changed" in str(later.value)
    assert states(api) == {"isolate": "Running"}  # the decision is on record
    assert status(api)["phase"] == "Containing"

    engine.reconcile(NS, "miner", book)
    assert states(api) == {"isolate": "Applied"}
    assert len(api.written("networkpolicies")) == 1


def test_a_temporary_error_is_retried_within_the_call(api: Recorder, engine: Engine) -> None:
    add_incident(api)
    api.fail("patch", "pods", 429, "slow down", times=2)
    engine.reconcile(NS, "miner", [playbook("contain", ISOLATE)])
    assert states(api) == {"isolate": "Applied"}
    assert [m for m, p in api.requests if p == f"/api/v1/namespaces/{NS}/pods/web-5d9c-0"
            ].count("PATCH") == 3


def test_the_incident_is_read_when_no_body_is_given(api: Recorder, engine: Engine) -> None:
    engine.reconcile(NS, "absent", [playbook("contain", ISOLATE)])
    assert api.writes == []
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook("contain", ISOLATE)])
    assert states(api) == {"isolate": "Applied"}


def test_phase_follows_the_incident_from_pending_to_resolved(api: Recorder,
                                                             engine: Engine) -> None:
    add_incident(api)
    book = [playbook("contain", ISOLATE, step("mark", "label", labels={"x": "y"}))]
    engine.reconcile(NS, "miner", book)
    phases = [w.body["status"]["phase"] for w in api.writes if w.resource == "securityincidents"]
    # The quarantine's decision goes with its outcome (replayable), the label's is
    # written before it is applied.
    assert phases == ["Containing", "Contained"]
    api.objects[("securityincidents", NS, "miner")]["spec"]["resolution"] = {"reason": "ok"}
    start = len(api.writes)
    engine.reconcile(NS, "miner", book)
    phases = [w.body["status"]["phase"] for w in api.writes[start:]
              if w.resource == "securityincidents"]
    assert set(phases[:-1]) == {"Recovering"} and phases[-1] == "Resolved"
