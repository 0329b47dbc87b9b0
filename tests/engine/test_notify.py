"""Notifications over the engine: the ``notify`` step and the playbook's notifications
on transitions, posted to a real HTTP receiver on loopback, the receiver named by a
Secret in the operator's namespace (in the recording API)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import pytest

from firebreak import notifications
from firebreak.actions import notify
from firebreak.api import Delivery, NotificationEvent
from firebreak.engine import Engine, RetryLater
from tests.engine.recorder import Crash, Recorder
from tests.engine.world import (
    NS,
    OPERATOR_NS,
    add_app,
    add_incident,
    add_nodes,
    condition,
    playbook,
    states,
    status,
    step,
)
from tests.receiver import Receiver, receiving

ISOLATE = step("isolate", "isolateNetwork")
SECRET = {"name": "oncall"}


@pytest.fixture(autouse=True)
def world(api: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    add_nodes(api, "node-a", "node-b")
    add_app(api)
    # Retries without the waits between them: the attempts are what is tested here.
    monkeypatch.setattr(notify, "WAIT_INITIAL", 0.0)
    monkeypatch.setattr(notify, "WAIT_MAX", 0.0)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as running:
        yield running


def add_secret(api: Recorder, url: str, name: str = "oncall", token: str | None = None) -> None:
    data = {"url": url, **({"token": token} if token else {})}
    api.add({"kind": "Secret", "metadata": {"name": name, "namespace": OPERATOR_NS},
             "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


def tell(name: str = "tell", on_failure: str | None = None, **params: object) -> dict[str, object]:
    made = step(name, "notify", secretRef=SECRET, **params)
    if on_failure is None:
        del made["onFailure"]  # the playbook does not say
    else:
        made["onFailure"] = on_failure
    return made


def test_a_notify_step_posts_json_with_the_secrets_token(
        api: Recorder, engine: Engine, receiver: Receiver) -> None:
    add_secret(api, f"{receiver.url}/hooks/sec", token="s3cret")
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook("p", ISOLATE, tell(message="${incident} isolated"))])
    assert states(api) == {"isolate": "Applied", "tell": "Applied"}
    (got,) = receiver.received
    assert got.path == "/hooks/sec"
    assert got.headers["Authorization"] == "Bearer s3cret"
    assert got.headers["Content-Type"] == "application/json"
    body = got.json()
    assert body["message"] == "shop/miner isolated"
    assert (body["event"], body["phase"], body["playbook"]) == (
        "notify", "Containing", f"{OPERATOR_NS}/p")
    assert body["incident"] == {"namespace": NS, "name": "miner"}
    tell_status = status(api)["actions"][1]
    assert tell_status["message"] == "delivered to http://127.0.0.1 (HTTP 200, 1 attempt)"
    assert "revert" not in tell_status
    # The URL is a credential: status names the receiver by scheme and host only.
    assert "/hooks/sec" not in str(status(api))


def test_a_slack_step_posts_text(api: Recorder, engine: Engine, receiver: Receiver) -> None:
    add_secret(api, receiver.url)
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook("p", tell(format="slack"))])
    assert receiver.bodies() == [{"text": "[critical] shop/miner (crypto miner): step tell"}]
    assert "Authorization" not in receiver.received[0].headers


def test_an_undelivered_notification_is_retried_then_recorded_and_containment_goes_on(
        api: Recorder, engine: Engine) -> None:
    with receiving(503, 503, 503) as down:
        add_secret(api, down.url)
        add_incident(api)
        engine.reconcile(NS, "miner", [playbook("p", tell(), ISOLATE)])
    assert len(down.received) == notify.ATTEMPTS
    assert states(api) == {"tell": "Failed", "isolate": "Applied"}
    assert status(api)["actions"][0]["message"] == (
        "not delivered to http://127.0.0.1 after 3 attempts: HTTP 503 no thanks")
    assert status(api)["phase"] == "Contained"


def test_a_playbook_may_make_a_notification_a_condition_of_going_on(
        api: Recorder, engine: Engine) -> None:
    with receiving(400) as refusing:
        add_secret(api, refusing.url)
        add_incident(api)
        engine.reconcile(NS, "miner", [playbook("p", tell(on_failure="abort"), ISOLATE)])
    assert len(refusing.received) == 1  # a 400 is not retried
    assert states(api) == {"tell": "Failed", "isolate": "Skipped"}
    assert condition(api, "Contained")["reason"] == "StepFailed"


def test_a_receiver_that_went_away_is_retried_then_recorded(
        api: Recorder, engine: Engine) -> None:
    with receiving() as gone:
        url = gone.url
    add_secret(api, url)
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook("p", tell(), ISOLATE)])
    assert states(api) == {"tell": "Failed", "isolate": "Applied"}
    assert status(api)["actions"][0]["message"].startswith(
        "not delivered to http://127.0.0.1 after 3 attempts: http://127.0.0.1 unreachable")


@pytest.mark.parametrize(("secret", "refusal"), [
    (None, f"Secret {OPERATOR_NS}/oncall not found: it must hold the receiver's url"),
    ("file:///etc/passwd", f"Secret {OPERATOR_NS}/oncall: url must be an http or https URL"),
])
def test_a_receiver_the_secret_does_not_name_refuses_the_step(
        api: Recorder, engine: Engine, secret: str | None, refusal: str) -> None:
    if secret is not None:
        add_secret(api, secret)
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook("p", tell(), ISOLATE)])
    assert states(api) == {"tell": "Refused", "isolate": "Applied"}
    assert status(api)["actions"][0]["message"] == refusal


def test_a_dry_run_says_where_it_would_post(api: Recorder, engine: Engine,
                                            receiver: Receiver) -> None:
    add_secret(api, receiver.url)
    add_incident(api)
    engine.reconcile(NS, "miner", [playbook("p", tell(), mode="dryRun")])
    assert status(api)["actions"][0]["message"] == (
        f"would post a json notification to http://127.0.0.1 (Secret {OPERATOR_NS}/oncall)")
    assert receiver.received == []


def test_notify_is_not_held_back_by_the_guardrails_on_targets(
        api: Recorder, engine: Engine, receiver: Receiver) -> None:
    """An incident about the operator's own namespace: nothing may act on its target, but
    people may be told."""
    add_secret(api, receiver.url)
    add_incident(api, namespace=OPERATOR_NS,
                 target={"kind": "Pod", "namespace": OPERATOR_NS, "name": "firebreak-0"})
    engine.reconcile(OPERATOR_NS, "miner", [playbook(
        "p", step("isolate", "isolateNetwork", on_failure="continue"), tell())])
    assert states(api, namespace=OPERATOR_NS) == {"isolate": "Refused", "tell": "Applied"}
    assert len(receiver.received) == 1


# --- the playbook's notifications on transitions -------------------------------------


def careful(*notifications: dict[str, object]) -> list[object]:
    return [playbook("careful", ISOLATE, notifications=list(notifications),
                     approval={"policy": "manual", "timeoutSeconds": 600})]


JSON_HOOK = {"name": "pager", "events": ["AwaitingApproval", "Contained"],
             "secretRef": {"name": "pager"}}
SLACK_HOOK = {"name": "chat", "events": ["AwaitingApproval", "Contained", "Resolved"],
              "secretRef": {"name": "chat"}, "format": "slack"}


def approve(api: Recorder) -> None:
    api.objects[("securityincidents", NS, "miner")]["spec"]["approval"] = {
        "decision": "approve", "by": "alice"}


def test_transitions_are_announced_once_to_each_notification_that_asks(
        api: Recorder, engine: Engine) -> None:
    with receiving() as pager, receiving() as chat:
        add_secret(api, f"{pager.url}/pager", name="pager")
        add_secret(api, f"{chat.url}/chat", name="chat")
        add_incident(api)
        with pytest.raises(RetryLater):
            engine.reconcile(NS, "miner", careful(JSON_HOOK, SLACK_HOOK))
        assert [b["event"] for b in pager.bodies()] == ["AwaitingApproval"]
        assert chat.bodies() == [{"text": "[critical] AwaitingApproval: shop/miner (crypto "
                                          "miner): waiting up to 600s for spec.approval"}]
        assert [d["state"] for d in status(api)["deliveries"]] == ["Sent", "Sent"]

        # Polling while nobody decided announces nothing again.
        with pytest.raises(RetryLater):
            engine.reconcile(NS, "miner", careful(JSON_HOOK, SLACK_HOOK))
        assert len(pager.received) == len(chat.received) == 1

        approve(api)
        engine.reconcile(NS, "miner", careful(JSON_HOOK, SLACK_HOOK))
        assert status(api)["phase"] == "Contained"
        contained = pager.bodies()[1]
        assert (contained["event"], contained["phase"], contained["target"]) == (
            "Contained", "Contained", "Pod shop/web-5d9c-0")
        assert chat.bodies()[1]["text"].startswith("[critical] Contained: shop/miner")
        engine.reconcile(NS, "miner", careful(JSON_HOOK, SLACK_HOOK))
        assert len(pager.received) == len(chat.received) == 2

        api.objects[("securityincidents", NS, "miner")]["spec"]["resolution"] = {
            "reason": "false positive", "by": "alice"}
        engine.reconcile(NS, "miner", careful(JSON_HOOK, SLACK_HOOK))
        assert len(pager.received) == 2  # the pager did not ask for Resolved
        assert chat.bodies()[2]["text"].startswith("[critical] Resolved: shop/miner")
    deliveries = status(api)["deliveries"]
    assert [(d["notification"], d["event"], d["state"]) for d in deliveries] == [
        ("pager", "AwaitingApproval", "Sent"), ("chat", "AwaitingApproval", "Sent"),
        ("pager", "Contained", "Sent"), ("chat", "Contained", "Sent"),
        ("chat", "Resolved", "Sent")]
    reasons = [t["reason"] for t in status(api)["timeline"]]
    assert reasons.count("NotificationSent") == 5


def test_the_notifications_are_fixed_at_triage(api: Recorder, engine: Engine,
                                               receiver: Receiver) -> None:
    add_secret(api, receiver.url, name="pager")
    add_incident(api)
    with pytest.raises(RetryLater):
        engine.reconcile(NS, "miner", careful(JSON_HOOK))
    assert status(api)["notifications"] == [{**JSON_HOOK, "format": "json"}]
    approve(api)
    engine.reconcile(NS, "miner", careful())  # the playbook lost its notifications since
    assert [b["event"] for b in receiver.bodies()] == ["AwaitingApproval", "Contained"]


def test_a_failed_announcement_is_recorded_with_a_warning_and_not_repeated(
        api: Recorder, engine: Engine) -> None:
    with receiving(500, 500, 500) as down:
        add_secret(api, down.url, name="pager")
        add_incident(api)
        with pytest.raises(RetryLater):
            engine.reconcile(NS, "miner", careful(JSON_HOOK))
        with pytest.raises(RetryLater):
            engine.reconcile(NS, "miner", careful(JSON_HOOK))
    assert len(down.received) == notify.ATTEMPTS
    (delivery,) = status(api)["deliveries"]
    assert (delivery["state"], delivery["attempts"], delivery["message"]) == (
        "Failed", 3, "HTTP 500 no thanks")
    assert status(api)["timeline"][-1]["reason"] == "NotificationFailed"
    assert "create events shop/miner.00003" in api.written()  # a Warning Event


def test_a_crash_after_posting_announces_again(
        api: Recorder, make_engine: Callable[[], Engine], receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    add_secret(api, receiver.url, name="pager")
    add_incident(api)
    with pytest.raises(RetryLater):
        make_engine().reconcile(NS, "miner", careful(JSON_HOOK))
    approve(api)
    record = notifications.record

    def die_before_recording(deliveries: list[Delivery], delivery: Delivery) -> list[Delivery]:
        if delivery.event is NotificationEvent.contained:
            raise Crash()
        return record(deliveries, delivery)

    # Contained is written, posted, and the process dies before recording the post.
    monkeypatch.setattr(notifications, "record", die_before_recording)
    with pytest.raises(Crash):
        make_engine().reconcile(NS, "miner", careful(JSON_HOOK))
    assert status(api)["phase"] == "Contained"
    monkeypatch.setattr(notifications, "record", record)
    make_engine().reconcile(NS, "miner", careful(JSON_HOOK))
    assert [b["event"] for b in receiver.bodies()] == ["AwaitingApproval", "Contained",
                                                       "Contained"]
    assert [d["event"] for d in status(api)["deliveries"]] == ["AwaitingApproval", "Contained"]
