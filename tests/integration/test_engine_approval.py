"""Approval gates, driven with an injected clock against the real API server."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from firebreak.actions import registry
from firebreak.api import ResponsePlaybookSpec
from firebreak.config import OperatorConfig
from firebreak.engine import Engine, RetryLater
from firebreak.kube import Kube
from firebreak.matching import PlaybookCandidate
from tests.helpers import GROUP, VERSION, create_incident

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def playbook(on_timeout: str) -> PlaybookCandidate:
    return PlaybookCandidate("firebreak-system", "careful", ResponsePlaybookSpec.model_validate({
        "approval": {"policy": "manual", "timeoutSeconds": 600, "onTimeout": on_timeout},
        "steps": [{"name": "isolate", "action": "isolateNetwork"}]}))


@pytest.mark.parametrize(("on_timeout", "phase", "reason", "policies"), [
    ("reject", "Suppressed", "ApprovalTimedOut", 0),
    ("approve", "Contained", "ApprovedOnTimeout", 1),
])
def test_approval_timeout(on_timeout: str, phase: str, reason: str, policies: int,
                          kube: Kube, custom: client.CustomObjectsApi,
                          make_app: Callable[..., list[Any]], api_client: client.ApiClient,
                          namespace: str) -> None:
    (pod,) = make_app("web", 1)
    create_incident(custom, namespace, "wait", {"kind": "Pod", "namespace": namespace,
                                                "name": pod.metadata.name})
    clock = Clock()
    engine = Engine(kube=kube, config=OperatorConfig(namespace="firebreak-system"),
                    actions=registry(), emit=lambda *a: None, clock=clock)
    with pytest.raises(RetryLater) as waiting:
        engine.reconcile(namespace, "wait", [playbook(on_timeout)])
    assert 0 < waiting.value.delay <= 10

    clock.now += dt.timedelta(seconds=599)
    with pytest.raises(RetryLater):
        engine.reconcile(namespace, "wait", [playbook(on_timeout)])

    clock.now += dt.timedelta(seconds=2)
    engine.reconcile(namespace, "wait", [playbook(on_timeout)])
    status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents",
                                                 "wait")["status"]
    assert status["phase"] == phase
    approved = next(c for c in status["conditions"] if c["type"] == "Approved")
    assert approved["reason"] == reason
    found = client.NetworkingV1Api(api_client).list_namespaced_network_policy(namespace).items
    assert len(found) == policies


def test_rejection_skips_every_step(kube: Kube, custom: client.CustomObjectsApi,
                                   make_app: Callable[..., list[Any]], namespace: str) -> None:
    (pod,) = make_app("web", 1)
    create_incident(custom, namespace, "no", {"kind": "Pod", "namespace": namespace,
                                              "name": pod.metadata.name},
                    approval={"decision": "reject", "by": "carol", "reason": "maintenance"})
    engine = Engine(kube=kube, config=OperatorConfig(namespace="firebreak-system"),
                    actions=registry(), emit=lambda *a: None)
    engine.reconcile(namespace, "no", [playbook("approve")])
    status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents",
                                                 "no")["status"]
    assert status["phase"] == "Suppressed"
    assert [a["state"] for a in status["actions"]] == ["Skipped"]
    approved = next(c for c in status["conditions"] if c["type"] == "Approved")
    assert approved["reason"] == "RejectedByPerson" and "carol" in approved["message"]
