"""The Kopf handlers are one-line delegations to the services built at start-up; here
they are called as Kopf calls them, with a memo holding ``Services`` over the
recording API."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

import kopf
import pytest

from firebreak import handlers
from firebreak.actions import registry
from firebreak.config import OperatorConfig
from firebreak.engine import Engine
from firebreak.events import EventPoster, post_event
from firebreak.intake import Intake
from firebreak.readiness import PlaybookReadiness
from firebreak.sources.trivy import TrivyThresholds
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


@pytest.fixture
def memo(api: Recorder, clock: Clock) -> Iterator[kopf.Memo]:
    add_nodes(api, "node-a")
    add_app(api)
    config = OperatorConfig(namespace=OPERATOR_NS)
    kube = api.kube()
    events = EventPoster(kube)
    found = kopf.Memo(config=config)
    found[handlers.SERVICES] = handlers.Services(
        config=config,
        engine=Engine(kube=kube, config=config, actions=registry(), emit=events, clock=clock),
        intake=Intake(kube, config, clock=clock, retry_for=0),
        events=events,
        trivy=TrivyThresholds(min_severity="CRITICAL", require_fix=True, min_count=1),
        readiness=PlaybookReadiness(kube=kube, emit=partial(post_event, kube), clock=clock))
    yield found
    events.close()


def index(*books: Any) -> dict[None, list[Any]]:
    return {handlers.ALL: list(books)}


def test_reconcile_delegates_to_the_engine(api: Recorder, memo: kopf.Memo) -> None:
    add_incident(api)
    handlers.reconcile(namespace=NS, name="miner", body=incident(api), memo=memo,
                       playbooks=index(playbook("contain", step("isolate", "isolateNetwork"))))
    assert states(api) == {"isolate": "Applied"}


def test_waiting_for_approval_is_a_kopf_temporary_error_with_the_delay(
        api: Recorder, memo: kopf.Memo) -> None:
    add_incident(api)
    book = playbook("careful", step("isolate", "isolateNetwork"),
                    approval={"policy": "manual", "timeoutSeconds": 6})
    with pytest.raises(kopf.TemporaryError) as waiting:
        handlers.reconcile(namespace=NS, name="miner", body=incident(api), memo=memo,
                           playbooks=index(book))
    assert waiting.value.delay == 6


def test_release_delegates_to_the_engine(api: Recorder, memo: kopf.Memo) -> None:
    add_incident(api)
    book = playbook("contain", step("isolate", "isolateNetwork"))
    handlers.reconcile(namespace=NS, name="miner", body=incident(api), memo=memo,
                       playbooks=index(book))
    handlers.release(namespace=NS, name="miner", body=incident(api), memo=memo)
    assert api.get("networkpolicies", NS, "firebreak-quarantine-miner") is None


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


def test_a_playbook_says_whether_it_is_ready_and_writes_only_changes(
        api: Recorder, memo: kopf.Memo) -> None:
    good = _stored_playbook(api, "good", {"steps": [step("isolate", "isolateNetwork")]})
    bad = _stored_playbook(api, "bad", {"priority": 100, "steps": [
        {"name": "stop", "action": "scaleDown", "params": {"replicas": "zero"}}]})
    api.clear()

    handlers.playbook_ready(type="ADDED", body=good, memo=memo)
    handlers.playbook_ready(type="ADDED", body=bad, memo=memo)

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
        handlers.playbook_ready(type="MODIFIED", body=found, memo=memo)
    assert api.written() == writes


def test_an_invalid_playbook_is_left_out_of_matching_and_shadows_no_valid_one(
        api: Recorder, memo: kopf.Memo) -> None:
    good = {"priority": 1, "steps": [step("isolate", "isolateNetwork")]}
    bad = {"priority": 100, "steps": [
        {"name": "stop", "action": "scaleDown", "params": {"replicas": -1}}]}
    indexed = [handlers.playbooks(namespace=OPERATOR_NS, name=name, spec=spec, logger=LOG)
               for name, spec in (("good", good), ("bad", bad))]
    assert indexed[1] is None
    assert indexed[0] is not None
    add_incident(api)
    handlers.reconcile(namespace=NS, name="miner", body=incident(api), memo=memo,
                       playbooks=index(indexed[0][handlers.ALL]))
    assert states(api) == {"isolate": "Applied"}
