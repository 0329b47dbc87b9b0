"""The handlers hand what the watches see to the controller, whose workers move
incidents on; here they are called as the watches call them, with a memo holding
``Services`` over the recording API, and the controller's workers running on the test's
event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import kopf
import pytest

from firebreak import handlers
from firebreak.actions import registry
from firebreak.config import OperatorConfig
from firebreak.controller import INCIDENT, Controller, quarantine_index, settled, settling
from firebreak.engine import Engine
from firebreak.events import EventPoster, post_event
from firebreak.intake import Intake
from firebreak.isolation import PolicySet
from firebreak.readiness import PlaybookReadiness
from firebreak.sources.trivy import TrivyThresholds
from firebreak.views import PolicyView
from tests.engine.recorder import Recorder
from tests.engine.world import (
    NS,
    OPERATOR_NS,
    Clock,
    add_app,
    add_incident,
    add_nodes,
    incident,
    playbook,
    states,
    step,
)

LOG = logging.getLogger(__name__)
ISOLATE = step("isolate", "isolateNetwork")


class Switch:
    """Stands in for the Lease: whether this replica leads is the test's to say."""

    def __init__(self, leading: bool) -> None:
        self.on = leading
        self.listeners: list[Callable[[bool], None]] = []

    def leading(self) -> bool:
        return self.on

    def on_change(self, listener: Callable[[bool], None]) -> None:
        self.listeners.append(listener)

    def flip(self, leading: bool) -> None:
        self.on = leading
        for listener in self.listeners:
            listener(leading)

    async def run(self) -> None:
        await asyncio.Event().wait()

    def release(self) -> None:
        pass


@pytest.fixture
def switch() -> Switch:
    return Switch(leading=True)


@pytest.fixture
async def memo(api: Recorder, clock: Clock, switch: Switch) -> AsyncIterator[kopf.Memo]:
    add_nodes(api, "node-a")
    add_app(api)
    config = OperatorConfig(namespace=OPERATOR_NS)
    kube = api.kube()
    events = EventPoster(kube)
    engine = Engine(kube=kube, config=config, actions=registry(), emit=events, clock=clock)
    readiness = PlaybookReadiness(kube=kube, emit=partial(post_event, kube), clock=clock)
    controller = Controller(engine, readiness, switch, workers=2,  # type: ignore[arg-type]
                            hold_interval=0)
    found = kopf.Memo(config=config)
    services = found[handlers.SERVICES] = handlers.Services(
        config=config, engine=engine, controller=controller,
        intake=Intake(kube, config, clock=clock, retry_for=0), events=events,
        policies=PolicyView(),
        trivy=TrivyThresholds(min_severity="CRITICAL", require_fix=True, min_count=1),
        running=asyncio.create_task(controller.run()))
    handlers.wire(services)
    yield found
    running = found[handlers.SERVICES].running
    assert running is not None
    running.cancel()
    controller.stop()
    events.close()


def catalogue(memo: kopf.Memo, *books: Any) -> None:
    """The playbooks, as their watch delivered them."""
    found = handlers.services(memo).playbooks
    found.clear()
    found.update({(b.namespace, b.name): b for b in books})


async def settle(memo: kopf.Memo) -> None:
    """Wait until the workers have nothing ready and nothing in hand."""
    queue = handlers.services(memo).controller.queue
    for _ in range(500):
        await asyncio.sleep(0.01)
        if queue.idle():
            return
    raise AssertionError("the controller's queue never settled")


async def indexed(api: Recorder, *names: str) -> dict[Any, list[Any]]:
    """An index of quarantines over only these incidents, as stored now."""
    index: dict[Any, list[Any]] = {}
    for name in names:
        for key, value in quarantine_index(incident(api, name)).items():
            index.setdefault(key, []).append(value)
    return index


async def seen(memo: kopf.Memo, api: Recorder, *books: Any, event: str = "MODIFIED",
               name: str = "miner") -> None:
    """The watch's event for the incident as stored now (the watches' first listings
    complete), then the workers' run."""
    catalogue(memo, *books)
    handlers.incidents_listed(handlers.services(memo))
    await handlers.incident(type=event, body=incident(api, name), memo=memo)
    await settle(memo)


async def test_an_incident_event_is_moved_on_by_the_workers(api: Recorder,
                                                            memo: kopf.Memo) -> None:
    add_incident(api)
    await seen(memo, api, playbook("contain", ISOLATE), event="ADDED")
    assert states(api) == {"isolate": "Applied"}


async def test_an_incident_intake_created_is_worked_on_without_waiting_for_the_watch(
        api: Recorder, memo: kopf.Memo) -> None:
    controller = handlers.services(memo).controller
    add_incident(api)
    # Before the watches' first listings are complete, the watch delivers it.
    controller.created(incident(api))
    assert (INCIDENT, NS, "miner") not in controller.queue
    await seen(memo, api, playbook("contain", ISOLATE), event="ADDED")
    add_incident(api, name="again")
    made = incident(api, "again")
    controller.created(made)
    assert (INCIDENT, NS, "again") in controller.queue
    await settle(memo)
    assert states(api, "again") == {"isolate": "Applied"}
    # The watch's delivery of that creation, a moment later, is not worked on again.
    writes = len(api.writes)
    catalogue(memo, playbook("contain", ISOLATE))
    await handlers.incident(type="ADDED", body=made, memo=memo)
    assert (INCIDENT, NS, "again") not in controller.queue
    await settle(memo)
    assert len(api.writes) == writes


async def test_the_controller_keeps_incidents_without_their_managed_fields(
        api: Recorder, memo: kopf.Memo) -> None:
    controller = handlers.services(memo).controller
    add_incident(api)
    body = incident(api)
    body["metadata"]["managedFields"] = [{"manager": "firebreak", "fieldsV1": {"f:status": {}}}]
    catalogue(memo, playbook("contain", ISOLATE))
    await handlers.incident(type="ADDED", body=body, memo=memo)
    await settle(memo)
    assert states(api) == {"isolate": "Applied"}
    kept = controller.body((INCIDENT, NS, "miner"))
    assert kept is not None
    assert "managedFields" not in kept["metadata"] and kept["metadata"]["name"] == "miner"
    assert "managedFields" in body["metadata"]  # the watch's object is left as it was


async def test_the_echo_of_its_own_write_is_not_worked_on_again(api: Recorder,
                                                                memo: kopf.Memo) -> None:
    add_incident(api)
    book = playbook("contain", ISOLATE)
    await seen(memo, api, book, event="ADDED")

    def incident_requests() -> list[tuple[str, str]]:
        # Events are posted from a thread of their own, whenever: not counted here.
        return [r for r in api.requests if "/events" not in r[1]]

    before = incident_requests()
    await seen(memo, api, book)  # the watch brings back what the engine wrote
    assert incident_requests() == before


async def test_waiting_for_approval_queues_the_incident_for_its_deadline(
        api: Recorder, memo: kopf.Memo) -> None:
    add_incident(api)
    book = playbook("careful", ISOLATE, approval={"policy": "manual", "timeoutSeconds": 6})
    await seen(memo, api, book, event="ADDED")
    queue = handlers.services(memo).controller.queue
    assert (INCIDENT, NS, "miner") in queue
    assert queue.pending() == 1
    assert states(api) == {"isolate": "Pending"}


async def test_an_incident_made_without_the_finalizer_is_adopted_then_moved_on(
        api: Recorder, memo: kopf.Memo) -> None:
    made = add_incident(api)
    api.request("PATCH", f"/apis/firebreak.dev/v1alpha1/namespaces/{NS}/securityincidents/miner",
                body='{"metadata": {"finalizers": null}}',
                headers={"Content-Type": "application/merge-patch+json"})
    assert "finalizers" not in incident(api)["metadata"], made
    await seen(memo, api, playbook("contain", ISOLATE), event="ADDED")
    assert incident(api)["metadata"]["finalizers"] == ["firebreak.dev/finalizer"]
    assert states(api) == {"isolate": "Applied"}


async def test_deletion_reverts_then_lets_the_incident_go(api: Recorder,
                                                          memo: kopf.Memo) -> None:
    add_incident(api)
    await seen(memo, api, playbook("contain", ISOLATE), event="ADDED")
    api.request("DELETE", f"/apis/firebreak.dev/v1alpha1/namespaces/{NS}/securityincidents/miner")
    await seen(memo, api)
    assert api.get("networkpolicies", NS, "firebreak-quarantine-miner") is None
    assert api.get("securityincidents", NS, "miner") is None


async def test_a_replica_that_does_not_lead_acts_on_nothing_until_it_does(
        api: Recorder, memo: kopf.Memo, switch: Switch) -> None:
    switch.flip(False)
    add_incident(api)
    before = len(api.requests)
    catalogue(memo, playbook("contain", ISOLATE))
    await handlers.incident(type="ADDED", body=incident(api), memo=memo)
    await asyncio.sleep(0.2)
    assert len(api.requests) == before
    assert not handlers.services(memo).controller.queue.idle()  # kept for when it leads
    switch.flip(True)
    await asyncio.sleep(0.05)
    await settle(memo)
    assert states(api) == {"isolate": "Applied"}


async def test_a_policy_change_near_a_quarantine_puts_it_back(api: Recorder,
                                                             memo: kopf.Memo) -> None:
    add_incident(api)
    await seen(memo, api, playbook("contain", ISOLATE), event="ADDED")
    api.request("PATCH", f"/api/v1/namespaces/{NS}/pods/web-5d9c-0",
                body='{"metadata": {"labels": {"quarantine.firebreak.dev/miner": null}}}',
                headers={"Content-Type": "application/merge-patch+json"})
    quarantines = await indexed(api, "miner")
    other = {"metadata": {"name": "allow-all", "namespace": NS}, "spec": {}}
    await handlers.network_policy(type="ADDED", body=other, memo=memo, quarantines=quarantines)
    await settle(memo)
    pod = api.get("pods", NS, "web-5d9c-0")
    assert pod is not None
    assert "quarantine.firebreak.dev/miner" in pod["metadata"]["labels"]
    assert any(e["reason"] == "QuarantineRestored"
               for e in incident(api)["status"]["timeline"])


async def test_its_own_policy_as_it_made_it_asks_for_no_check(api: Recorder,
                                                             memo: kopf.Memo) -> None:
    add_incident(api)
    await seen(memo, api, playbook("contain", ISOLATE), event="ADDED")
    held = quarantine_index(incident(api))[NS]
    own = api.get("networkpolicies", NS, held.policy)
    await handlers.network_policy(type="ADDED", body=own, memo=memo,
                                  quarantines=await indexed(api, "miner"))
    assert handlers.services(memo).controller.queue.idle()
    assert (INCIDENT, NS, "miner") not in handlers.services(memo).controller.queue


async def test_its_own_policy_changed_asks_for_a_check_even_with_no_pod_left_to_hold(
        api: Recorder, memo: kopf.Memo) -> None:
    add_incident(api)
    await seen(memo, api, playbook("contain", ISOLATE), event="ADDED")
    held = quarantine_index(incident(api))[NS]
    index = await indexed(api, "miner")
    assert [k for k in index if k[0] == "pod"] != []
    # Found by its policy's name, not by the pods: here it records none.
    index = {k: v for k, v in index.items() if k[0] != "pod"}
    own = api.get("networkpolicies", NS, held.policy)
    assert own is not None
    edited = {**own, "spec": {**own["spec"], "ingress": [{}]}}
    await handlers.network_policy(type="MODIFIED", body=edited, memo=memo, quarantines=index)
    assert (INCIDENT, NS, "miner") in handlers.services(memo).controller.queue


def test_a_vulnerability_report_opens_an_incident(api: Recorder, memo: kopf.Memo) -> None:
    report = {"apiVersion": "aquasecurity.github.io/v1alpha1", "kind": "VulnerabilityReport",
              "metadata": {"name": "replicaset-web-5d9c-app", "namespace": NS, "labels": {
        "trivy-operator.resource.kind": "ReplicaSet",
        "trivy-operator.resource.name": "web-5d9c",
        "trivy-operator.resource.namespace": NS,
        "trivy-operator.container.name": "app"}},
        "report": {"artifact": {"repository": "library/nginx", "tag": "1.0"},
                   "vulnerabilities": [{"vulnerabilityID": "CVE-2025-0001",
                                        "severity": "CRITICAL", "installedVersion": "1",
                                        "fixedVersion": "2", "resource": "openssl",
                                        "title": "bad"}]}}
    handlers.vulnerability_report(type="ADDED", body=report, memo=memo, logger=LOG)
    (created,) = api.all("securityincidents", NS)
    assert created["spec"]["source"] == "trivy"
    assert created["spec"]["target"] == {"kind": "Deployment", "namespace": NS, "name": "web"}


def _trivy_meta(name: str, container: str | None = None) -> dict[str, Any]:
    labels = {"trivy-operator.resource.kind": "ReplicaSet",
              "trivy-operator.resource.name": "web-5d9c",
              "trivy-operator.resource.namespace": NS}
    if container:
        labels["trivy-operator.container.name"] = container
    return {"name": name, "namespace": NS, "uid": "first", "labels": labels}


def _secret_report() -> dict[str, Any]:
    return {"apiVersion": "aquasecurity.github.io/v1alpha1", "kind": "ExposedSecretReport",
            "metadata": _trivy_meta("replicaset-web-5d9c-app", "app"),
            "report": {"artifact": {"repository": "library/web", "tag": "1.0"},
                       "secrets": [{"ruleID": "aws-access-key-id", "category": "AWS",
                                    "severity": "CRITICAL", "title": "AWS Access Key ID",
                                    "target": "/app/.env", "match": "AKIA-LEAK"}]}}


def _audit_report() -> dict[str, Any]:
    return {"apiVersion": "aquasecurity.github.io/v1alpha1", "kind": "ConfigAuditReport",
            "metadata": _trivy_meta("replicaset-web-5d9c"),
            "report": {"checks": [{"checkID": "KSV017", "severity": "CRITICAL",
                                   "success": False, "messages": ["privileged"],
                                   "scope": {"type": "Container", "value": "app"}}]}}


@pytest.mark.parametrize(("handler", "build", "alert_name"), [
    (handlers.exposed_secret_report, _secret_report, "ExposedSecret"),
    (handlers.config_audit_report, _audit_report, "MisconfiguredWorkload"),
])
def test_a_trivy_report_opens_one_incident_however_often_it_is_recreated(
        api: Recorder, memo: kopf.Memo, handler: Any, build: Any, alert_name: str) -> None:
    handler(type="ADDED", body=build(), memo=memo, logger=LOG)
    again = build()
    again["metadata"]["uid"] = "second"  # Trivy's TTL: a new object, the same findings
    handler(type=None, body=again, memo=memo, logger=LOG)
    handler(type="DELETED", body=again, memo=memo, logger=LOG)
    (created,) = api.all("securityincidents", NS)
    assert created["spec"]["source"] == "trivy"
    assert created["spec"]["alertName"] == alert_name
    assert created["spec"]["target"] == {"kind": "Deployment", "namespace": NS, "name": "web"}
    assert "AKIA-LEAK" not in str(created)


def test_a_report_naming_a_workload_of_another_namespace_acts_on_nothing(
        api: Recorder, memo: kopf.Memo) -> None:
    body = _audit_report()
    body["metadata"]["namespace"] = "tenant-b"  # written where its author may write
    handlers.config_audit_report(type="ADDED", body=body, memo=memo, logger=LOG)
    assert api.all("securityincidents", NS) == []
    (recorded,) = api.all("securityincidents", OPERATOR_NS)
    assert "target" not in recorded["spec"]
    problem = recorded["metadata"]["annotations"]["firebreak.dev/target-problem"]
    assert problem.startswith(f"the report tenant-b/replicaset-web-5d9c names ReplicaSet {NS}/web-5d9c")


@pytest.mark.parametrize("malformed", [
    lambda secrets: secrets[0].__setitem__("severity", "SEVERE"),
    lambda secrets: secrets.append("AKIA-LEAK"),
    lambda secrets: secrets[0].__setitem__("target", ["AKIA-LEAK"]),
])
def test_a_malformed_trivy_report_is_logged_and_writes_nothing(
        api: Recorder, memo: kopf.Memo, caplog: pytest.LogCaptureFixture, malformed: Any) -> None:
    body = _secret_report()
    malformed(body["report"]["secrets"])
    handlers.exposed_secret_report(type="ADDED", body=body, memo=memo, logger=LOG)
    assert api.writes == []
    assert "ExposedSecretReport" in caplog.text and "malformed" in caplog.text
    assert "AKIA-LEAK" not in caplog.text


def test_services_must_have_been_set_up() -> None:
    with pytest.raises(RuntimeError, match="start-up handler did not run"):
        handlers.services(kopf.Memo())


def _stored_playbook(api: Recorder, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return api.add({"apiVersion": "firebreak.dev/v1alpha1", "kind": "ResponsePlaybook",
                    "metadata": {"name": name, "namespace": OPERATOR_NS}, "spec": spec})


def _ready(api: Recorder, name: str) -> dict[str, Any]:
    found = api.get("responseplaybooks", OPERATOR_NS, name)
    assert found is not None
    (ready,) = found["status"]["conditions"]
    assert ready["type"] == "Ready"
    return dict(ready)


async def test_a_playbook_says_whether_it_is_ready_and_writes_only_changes(
        api: Recorder, memo: kopf.Memo) -> None:
    good = _stored_playbook(api, "good", {"steps": [ISOLATE]})
    bad = _stored_playbook(api, "bad", {"priority": 100, "steps": [
        {"name": "stop", "action": "scaleDown", "params": {"replicas": "zero"}}]})
    api.clear()

    await handlers.playbook(type="ADDED", body=good, memo=memo)
    await handlers.playbook(type="ADDED", body=bad, memo=memo)
    await settle(memo)

    assert _ready(api, "good")["status"] == "True"
    invalid = _ready(api, "bad")
    assert (invalid["status"], invalid["reason"]) == ("False", "InvalidPlaybook")
    assert "steps.0.params.replicas" in invalid["message"]
    (event,) = api.all("events", OPERATOR_NS)
    assert (event["type"], event["reason"]) == ("Warning", "InvalidPlaybook")
    assert event["involvedObject"]["kind"] == "ResponsePlaybook"
    assert event["involvedObject"]["name"] == "bad"
    writes = api.written()
    # Seen again (Kopf's event for our own status write): nothing is written.
    for name in ("good", "bad"):
        found = api.get("responseplaybooks", OPERATOR_NS, name)
        await handlers.playbook(type="MODIFIED", body=found, memo=memo)
    await settle(memo)
    assert api.written() == writes


async def test_an_invalid_playbook_is_left_out_of_matching_and_shadows_no_valid_one(
        api: Recorder, memo: kopf.Memo) -> None:
    good = {"priority": 1, "steps": [ISOLATE]}
    bad = {"priority": 100, "steps": [
        {"name": "stop", "action": "scaleDown", "params": {"replicas": -1}}]}
    for name, spec in (("good", good), ("bad", bad)):
        await handlers.playbook(type="ADDED", body=_stored_playbook(api, name, spec), memo=memo)
    assert list(handlers.services(memo).playbooks) == [(OPERATOR_NS, "good")]
    add_incident(api)
    handlers.incidents_listed(handlers.services(memo))
    await handlers.incident(type="ADDED", body=incident(api), memo=memo)
    await settle(memo)
    assert states(api) == {"isolate": "Applied"}
    assert incident(api)["status"]["playbook"]["name"] == "good"


async def test_another_incidents_quarantine_policy_asks_for_one_check_within_a_second(
        api: Recorder, memo: kopf.Memo) -> None:
    add_incident(api)
    await seen(memo, api, playbook("contain", ISOLATE), event="ADDED")
    theirs = {"metadata": {"name": "firebreak-quarantine-other", "namespace": NS,
                           "annotations": {"firebreak.dev/incident-uid": "another-uid"}},
              "spec": {}}
    queue = handlers.services(memo).controller.queue
    for _ in range(3):
        await handlers.network_policy(type="ADDED", body=theirs, memo=memo,
                                      quarantines=await indexed(api, "miner"))
    assert (INCIDENT, NS, "miner") in queue
    assert queue.idle()  # not yet: within the second, once
    assert queue.pending() == 1


async def test_another_incidents_quarantine_of_other_pods_asks_for_no_check(
        api: Recorder, memo: kopf.Memo) -> None:
    # Three incidents quarantine pods in one namespace: "miner" and "again" the same
    # pod, "elsewhere" another one.
    add_incident(api)
    add_incident(api, name="again")
    add_incident(api, name="elsewhere",
                 target={"kind": "Pod", "namespace": NS, "name": "web-5d9c-1"})
    for name in ("miner", "again", "elsewhere"):
        await seen(memo, api, playbook("contain", ISOLATE), event="ADDED", name=name)
    held = {name: quarantine_index(incident(api, name))[NS]
            for name in ("miner", "again", "elsewhere")}
    controller = handlers.services(memo).controller
    # The policy of "elsewhere" selects only its own pod: nothing "miner" holds.
    theirs = api.get("networkpolicies", NS, held["elsewhere"].policy)
    assert theirs is not None
    await handlers.network_policy(type="MODIFIED", body=theirs, memo=memo,
                                  quarantines=await indexed(api, "miner", "again"))
    assert (INCIDENT, NS, "miner") not in controller.queue
    assert (INCIDENT, NS, "again") not in controller.queue
    # The policy of "again" quarantines the pod "miner" holds too: one check.
    ours = api.get("networkpolicies", NS, held["again"].policy)
    assert ours is not None
    await handlers.network_policy(type="MODIFIED", body=ours, memo=memo,
                                  quarantines=await indexed(api, "miner", "elsewhere"))
    assert (INCIDENT, NS, "miner") in controller.queue
    assert (INCIDENT, NS, "elsewhere") not in controller.queue


async def test_the_policy_watch_feeds_the_view_which_answers_once_incidents_are_handled(
        api: Recorder, memo: kopf.Memo) -> None:
    view = handlers.services(memo).policies
    assert view is not None
    allow = {"metadata": {"name": "allow", "namespace": NS, "resourceVersion": "5"},
             "spec": {"podSelector": {}}}
    await handlers.network_policy(type=None, body=allow, memo=memo)
    assert view.in_namespace(NS) is None  # the first listing may still be arriving
    view.mark_synced()  # as ``follow`` does once the policies are listed
    assert [p["metadata"]["name"] for p in view.in_namespace(NS) or []] == ["allow"]
    changed = {**allow, "metadata": {**allow["metadata"], "resourceVersion": "6"}}
    await handlers.network_policy(type="MODIFIED", body=changed, memo=memo, quarantines={})
    assert [p["metadata"]["resourceVersion"] for p in view.in_namespace(NS) or []] == ["6"]
    await handlers.network_policy(type="DELETED", body=changed, memo=memo, quarantines={})
    emptied = view.in_namespace(NS)
    assert emptied is not None and len(emptied) == 0


async def test_another_quarantine_of_the_same_pod_allowing_no_more_asks_for_no_check(
        api: Recorder, memo: kopf.Memo) -> None:
    add_incident(api)
    add_incident(api, name="again")
    for name in ("miner", "again"):
        await seen(memo, api, playbook("contain", ISOLATE), event="ADDED", name=name)
    held = {name: quarantine_index(incident(api, name))[NS] for name in ("miner", "again")}
    for name in ("miner", "again"):  # as the policy watch delivers them
        await handlers.network_policy(type="ADDED", memo=memo, quarantines={},
                                      body=api.get("networkpolicies", NS, held[name].policy))
    controller = handlers.services(memo).controller
    theirs = api.get("networkpolicies", NS, held["again"].policy)
    assert theirs is not None
    await handlers.network_policy(type="MODIFIED", body=theirs, memo=memo,
                                  quarantines=await indexed(api, "miner"))
    assert (INCIDENT, NS, "miner") not in controller.queue
    # Edited to let more in (here: from every pod of the namespace), it is judged.
    wider = {**theirs, "spec": {**theirs["spec"], "ingress": [{"from": [{"podSelector": {}}]}]}}
    await handlers.network_policy(type="MODIFIED", body=wider, memo=memo,
                                  quarantines=await indexed(api, "miner"))
    assert (INCIDENT, NS, "miner") in controller.queue


async def test_the_periodic_check_of_every_quarantine_is_spread_over_its_interval(
        api: Recorder, memo: kopf.Memo) -> None:
    names = ["miner", "a", "b"]  # fewer than a sweep's worth in one namespace
    for name in names:
        add_incident(api, name=name)
        await seen(memo, api, playbook("contain", ISOLATE), event="ADDED", name=name)
    controller = handlers.services(memo).controller
    add_incident(api, name="unheld")  # no quarantine: never checked
    catalogue(memo)
    await handlers.incident(type="ADDED", body=incident(api, "unheld"), memo=memo)
    await settle(memo)
    controller.hold_every_quarantine(within=60.0)
    # One check now, the others at 20 and 40 s: none waits for all the others.
    assert all((INCIDENT, NS, name) in controller.queue for name in names)
    assert (INCIDENT, NS, "unheld") not in controller.queue
    assert controller.queue.depth() <= 1 and controller.queue.pending() >= 2


async def test_a_namespace_of_many_quarantines_is_checked_from_one_listing_of_its_pods(
        api: Recorder, memo: kopf.Memo) -> None:
    names = ["miner", "a", "b", "c", "d"]
    for name in names:
        add_incident(api, name=name)
        await seen(memo, api, playbook("contain", ISOLATE), event="ADDED", name=name)
    # Someone took the quarantine label off the pod.
    api.request("PATCH", f"/api/v1/namespaces/{NS}/pods/web-5d9c-0",
                body='{"metadata": {"labels": {"quarantine.firebreak.dev/miner": null}}}',
                headers={"Content-Type": "application/merge-patch+json"})
    controller = handlers.services(memo).controller
    before = len(api.requests)
    controller.hold_every_quarantine(within=0.0)
    await asyncio.sleep(0.05)
    await settle(memo)
    listings = [p for m, p in api.requests[before:] if m == "GET" and p.endswith("/pods")]
    assert listings == [f"/api/v1/namespaces/{NS}/pods"]  # one, for all five
    pod = api.get("pods", NS, "web-5d9c-0")
    assert pod is not None and pod["metadata"]["labels"]["quarantine.firebreak.dev/miner"] == "true"
    assert any(e["reason"] == "QuarantineRestored" for e in incident(api)["status"]["timeline"])


async def test_a_sweep_checks_only_the_quarantines_with_something_to_check(
        api: Recorder, memo: kopf.Memo, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["miner", "a", "b", "c", "d"]
    for name in names:
        add_incident(api, name=name)
        await seen(memo, api, playbook("contain", ISOLATE), event="ADDED", name=name)
    view = PolicyView()
    for policy in api.all("networkpolicies"):  # as the policy watch delivered them
        view.upsert(policy)
    view.mark_synced()
    services = handlers.services(memo)
    services.engine.policies = view.in_namespace
    checked: list[str] = []
    hold = services.engine.hold

    def counted(namespace: str, name: str, *args: Any, **kwargs: Any) -> None:
        checked.append(name)
        hold(namespace, name, *args, **kwargs)

    monkeypatch.setattr(services.engine, "hold", counted)

    async def sweep() -> list[str]:
        checked.clear()
        services.controller.hold_every_quarantine(within=0.0)
        await asyncio.sleep(0.05)
        await settle(memo)
        return sorted(checked)

    api.request("PATCH", f"/api/v1/namespaces/{NS}/pods/web-5d9c-0",
                body='{"metadata": {"labels": {"quarantine.firebreak.dev/miner": null}}}',
                headers={"Content-Type": "application/merge-patch+json"})
    before = len(api.writes)
    # The four quarantines as they were are not checked, and nothing is written for
    # them; the one that lost its label is put back, and says so.
    assert await sweep() == ["miner"]
    assert api.written()[before:] == [f"patch pods {NS}/web-5d9c-0",
                                      f"patch securityincidents/status {NS}/miner",
                                      f"create events {NS}/miner.00001"]  # QuarantineRestored
    assert await sweep() == []  # all settled now

    # A deny policy of someone else's selecting the pods opens nothing: still settled.
    view.upsert(api.add({"kind": "NetworkPolicy",
                         "metadata": {"name": "deny-web", "namespace": NS},
                         "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                                  "policyTypes": ["Ingress"]}}))
    assert await sweep() == []
    # One allowing ingress from pods that do not exist today opens nothing today, but
    # would when such a pod comes: every quarantine it selects is judged again.
    view.upsert(api.add({"kind": "NetworkPolicy",
                         "metadata": {"name": "from-ghost", "namespace": NS},
                         "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                                  "policyTypes": ["Ingress"], "ingress": [{"from": [
                                      {"podSelector": {"matchLabels": {"app": "ghost"}}}]}]}}))
    assert await sweep() == sorted(names)


async def test_a_sweep_judges_an_incident_from_what_was_taken_of_its_body(
        api: Recorder, memo: kopf.Memo) -> None:
    """What a sweep keeps of each incident (``settling``) says "nothing to check" only
    for an isolated, unresolved quarantine whose applied pod-scoped steps find their
    pods labelled and no policy there allowing more than their own."""
    add_incident(api)
    await seen(memo, api, playbook("contain", ISOLATE))
    body = incident(api)
    pods = {p["metadata"]["uid"]: p for p in api.all("pods", NS)}
    policies = PolicySet(api.all("networkpolicies", NS))
    assert settled(settling(body), NS, pods, policies)

    def changed(edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        copy = incident(api)
        edit(copy)
        return copy

    def isolated(value: str) -> Callable[[dict[str, Any]], None]:
        def edit(b: dict[str, Any]) -> None:
            for c in b["status"]["conditions"]:
                if c["type"] == "Isolated":
                    c["status"] = value
        return edit

    def step(**fields: Any) -> Callable[[dict[str, Any]], None]:
        return lambda b: b["status"]["actions"][0].update(fields)

    unsettled = [
        changed(isolated("False")),
        changed(lambda b: b["spec"].update(resolution={"state": "resolved"})),
        changed(step(state="Running")),
        changed(step(params={"scope": "workload"})),
        changed(lambda b: b["status"]["actions"][0]["revert"].update(policy="not-there")),
    ]
    for edited in unsettled:
        assert not settled(settling(edited), NS, pods, policies), edited["status"]["actions"]
    assert not settled(settling(body), NS, pods, None)  # no view of the policies yet
    assert not settled(settling(body), "elsewhere", pods, policies)  # nothing held there
    assert settled(settling(body), NS, {}, policies)  # its pod gone: nothing to hold
    unlabelled = {uid: {**pod, "metadata": {**pod["metadata"], "labels": {}}}
                  for uid, pod in pods.items()}
    assert not settled(settling(body), NS, unlabelled, policies)
    opening = api.add({"kind": "NetworkPolicy", "metadata": {"name": "open", "namespace": NS},
                       "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                                "ingress": [{}]}})
    policies.put(opening)
    assert not settled(settling(body), NS, pods, policies)


async def test_a_listing_older_than_the_quarantines_label_restores_nothing(
        api: Recorder, memo: kopf.Memo) -> None:
    """A sweep lists the namespace's pods, and a quarantine labels its pod a moment
    later: the check then given that listing reads the pod again before it says it
    put a label back (under load, ten in 3,000 such checks had claimed a restore)."""
    stale = api.get("pods", NS, "web-5d9c-0")  # listed before the quarantine
    add_incident(api)
    await seen(memo, api, playbook("contain", ISOLATE))
    label = "quarantine.firebreak.dev/miner"
    assert (api.get("pods", NS, "web-5d9c-0") or {})["metadata"]["labels"][label] == "true"
    assert stale is not None and label not in stale["metadata"]["labels"]
    engine = handlers.services(memo).engine
    before = len(api.writes)
    engine.hold(NS, "miner", incident(api), pods={NS: [stale]})
    assert api.written()[before:] == []
    assert not any(e["reason"] == "QuarantineRestored" for e in incident(api)["status"]["timeline"])
    # A label that is really gone is put back, as before.
    api.request("PATCH", f"/api/v1/namespaces/{NS}/pods/web-5d9c-0",
                body='{"metadata": {"labels": {"quarantine.firebreak.dev/miner": null}}}',
                headers={"Content-Type": "application/merge-patch+json"})
    engine.hold(NS, "miner", incident(api), pods={NS: [stale]})
    assert (api.get("pods", NS, "web-5d9c-0") or {})["metadata"]["labels"][label] == "true"
    assert any(e["reason"] == "QuarantineRestored" for e in incident(api)["status"]["timeline"])


async def test_a_sweep_holds_the_pods_it_listed_without_their_managed_fields(
        api: Recorder, memo: kopf.Memo) -> None:
    add_incident(api)
    await seen(memo, api, playbook("contain", ISOLATE))
    pod = api.get("pods", NS, "web-5d9c-0")
    assert pod is not None
    pod["metadata"]["managedFields"] = [{"manager": "kubelet", "operation": "Update"}]
    stored = api.add(pod)
    listed = {p["metadata"]["name"]: p for p in handlers.services(memo).engine.pods_in(NS)}
    kept = listed["web-5d9c-0"]
    assert "managedFields" in stored["metadata"] and "managedFields" not in kept["metadata"]
    assert kept["metadata"] == {k: v for k, v in stored["metadata"].items()
                                if k != "managedFields"}
    assert kept["spec"] == pod["spec"] and kept["status"] == pod["status"]


def test_nothing_relies_on_kopfs_change_detection_which_is_off() -> None:
    # Kopf's diff of each object against the last one handled serves change handlers
    # and daemons only: the operator registers neither, so it switches the diff off.
    registry = kopf.get_default_registry()
    assert registry._watching.get_all_handlers()  # the event handlers are there
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()
    storage = handlers.NoChangeDetection()
    body = kopf.Body({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"b": 1}})
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None


async def test_a_policy_changed_before_the_incidents_are_listed_is_checked_once_they_are(
        api: Recorder, memo: kopf.Memo) -> None:
    found = handlers.services(memo)
    controller = found.controller
    add_incident(api)
    catalogue(memo, playbook("contain", ISOLATE))
    await handlers.incident(type=None, body=incident(api), memo=memo)  # being listed
    await settle(memo)
    assert states(api) == {"isolate": "Applied"}
    await handlers.incident(type="MODIFIED", body=incident(api), memo=memo)  # its echo
    other = {"metadata": {"name": "allow-all", "namespace": NS}, "spec": {"podSelector": {}}}
    await handlers.network_policy(type="ADDED", body=other, memo=memo)
    # No quarantine to look up yet (the listing of incidents may be half done).
    assert (INCIDENT, NS, "miner") not in controller.queue
    handlers.incidents_listed(found)
    assert (INCIDENT, NS, "miner") in controller.queue
    await settle(memo)
    # From now on, the index of quarantines the incidents' events keep answers at once.
    await handlers.network_policy(type="MODIFIED", body=other, memo=memo)
    assert (INCIDENT, NS, "miner") in controller.queue


async def test_the_liveness_probe_fails_once_the_watches_have_stopped(memo: kopf.Memo) -> None:
    async def stopped() -> None:
        raise RuntimeError("a bug")

    found = handlers.services(memo)
    running = dataclasses.replace(found, watching=asyncio.create_task(asyncio.sleep(60)))
    memo[handlers.SERVICES] = running
    assert handlers.watching(memo=memo) is True
    assert running.watching is not None
    running.watching.cancel()
    memo[handlers.SERVICES] = dataclasses.replace(found, watching=asyncio.create_task(stopped()))
    await asyncio.sleep(0)
    with pytest.raises(kopf.PermanentError):
        handlers.watching(memo=memo)
    memo[handlers.SERVICES] = found
