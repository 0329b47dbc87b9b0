"""The responder's commands over the recording API: what approve, reject and resolve
write and when they refuse, and evidence verification of a bundle the snapshot step
wrote. (Who the user is comes from the API server's SelfSubjectReview, which the
recording API does not model: it is given here; tests/e2e asks a real API server.)"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from firebreak.engine import Engine, RetryLater
from firebreak.responder import CommandError, Session
from tests.engine.recorder import Recorder
from tests.engine.world import (
    NS,
    OPERATOR_NS,
    Clock,
    add_app,
    add_incident,
    add_nodes,
    playbook,
    status,
    step,
)

MANUAL = [playbook("careful", step("evidence", "snapshot"), step("isolate", "isolateNetwork"),
                   approval={"policy": "manual", "timeoutSeconds": 600})]


@pytest.fixture
def session(api: Recorder, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Session:
    add_nodes(api, "node-a", "node-b")
    add_app(api)
    api.logs[("web-5d9c-0", "app", "")] = "stratum+tcp://pool.example:3333\n"
    made = Session(api.kube(), NS, clock=clock)
    monkeypatch.setattr(made, "whoami", lambda: "alice")
    return made


def spec(api: Recorder, name: str = "miner") -> dict[str, Any]:
    found = api.get("securityincidents", NS, name)
    assert found is not None
    return dict(found["spec"])


def awaiting(api: Recorder, engine: Engine) -> None:
    add_incident(api)
    with pytest.raises(RetryLater):  # waiting for a person
        engine.reconcile(NS, "miner", MANUAL)


def test_approve_writes_the_users_name_once(api: Recorder, engine: Engine,
                                            session: Session) -> None:
    awaiting(api, engine)
    assert session.decide("miner", "approve", None) == f"incident {NS}/miner approved by alice"
    assert spec(api)["approval"] == {"decision": "approve", "by": "alice"}
    with pytest.raises(CommandError, match="was already decided: approve by alice"):
        session.decide("miner", "reject", "changed my mind")
    engine.reconcile(NS, "miner", MANUAL)
    assert status(api)["phase"] == "Contained"


def test_reject_says_why(api: Recorder, engine: Engine, session: Session) -> None:
    awaiting(api, engine)
    assert session.decide("miner", "reject", "a test") == f"incident {NS}/miner rejected by alice"
    assert spec(api)["approval"] == {"decision": "reject", "by": "alice", "reason": "a test"}


def test_a_decision_past_its_time_is_refused(api: Recorder, engine: Engine,
                                             session: Session) -> None:
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook("auto", step("isolate", "isolateNetwork"))])
    with pytest.raises(CommandError, match=f"incident {NS}/miner is Contained: there is "
                                           f"nothing to approve any more"):
        session.decide("miner", "approve", None)
    assert "approval" not in spec(api)


def test_resolve_once(api: Recorder, engine: Engine, session: Session) -> None:
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook("auto", step("isolate", "isolateNetwork"))])
    assert session.resolve("miner", "false positive").startswith(
        f"incident {NS}/miner resolved by alice")
    assert spec(api)["resolution"] == {"reason": "false positive", "by": "alice"}
    with pytest.raises(CommandError, match="is already resolved: false positive \\(by alice\\)"):
        session.resolve("miner", "again")


def test_an_incident_that_does_not_exist_is_named(session: Session) -> None:
    with pytest.raises(CommandError, match="not found"):
        session.incident("nothing")


def test_list_sorts_by_namespace_then_age(api: Recorder, session: Session, clock: Clock) -> None:
    add_incident(api, name="b")
    clock.advance(1)
    add_incident(api, name="a")
    add_incident(api, name="z", namespace="other")
    assert [i["metadata"]["name"] for i in session.incidents(all_namespaces=False)] == ["b", "a"]
    assert [i["metadata"]["name"] for i in session.incidents(all_namespaces=True)] == [
        "z", "b", "a"]


def test_evidence_verifies_until_an_item_is_changed(api: Recorder, engine: Engine,
                                                    session: Session) -> None:
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook("auto", step("evidence", "snapshot"))])
    recorded, findings = session.verify("miner")
    assert recorded and findings == []
    (secret,) = api.all("secrets", OPERATOR_NS)
    key = "logs_web-5d9c-0_app.log"
    secret["data"][key] = base64.b64encode(b"nothing here\n").decode()
    del secret["immutable"]
    api.objects[("secrets", OPERATOR_NS, secret["metadata"]["name"])] = secret
    _, findings = session.verify("miner")
    name = secret["metadata"]["name"]
    assert [str(f).split(": SHA-256")[0] for f in findings] == [
        f"Secret {OPERATOR_NS}/{name}: not immutable: it can be changed in place",
        f"Secret {OPERATOR_NS}/{name} {key}: changed"]
    del api.objects[("secrets", OPERATOR_NS, name)]
    _, findings = session.verify("miner")
    assert [str(f) for f in findings] == [f"Secret {OPERATOR_NS}/{name}: missing: the object "
                                          f"is gone"]
