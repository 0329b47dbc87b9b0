"""The Kopf handlers are one-line delegations to the services built at start-up; here
they are called as Kopf calls them, with a memo holding ``Services`` over the
recording API."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import kopf
import pytest

from firebreak import handlers
from firebreak.actions import registry
from firebreak.config import OperatorConfig
from firebreak.engine import Engine
from firebreak.events import EventPoster
from firebreak.intake import Intake
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
        trivy=TrivyThresholds(min_severity="CRITICAL", require_fix=True, min_count=1))
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


def test_services_must_have_been_set_up() -> None:
    with pytest.raises(RuntimeError, match="start-up handler did not run"):
        handlers.services(kopf.Memo())
