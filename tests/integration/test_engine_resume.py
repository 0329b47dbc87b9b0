"""The engine resumes from its record after dying at any point of a step.

An action wrapper raises a BaseException (as a SIGKILL would stop the process:
no clean-up, no last status write) right before or right after the real apply.
A fresh engine then reconciles the same incident from what was persisted (for the
first step, a replayable quarantine, nothing: it is planned again). Nothing may be
applied twice: one NetworkPolicy, and the scale-down remembers the replica
count people had, not the one the first attempt left.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from firebreak.actions import registry
from firebreak.actions.base import Action, ActionContext, Applied, Prepared
from firebreak.api import ActionName, ResponsePlaybookSpec
from firebreak.config import OperatorConfig
from firebreak.engine import Engine
from firebreak.kube import Kube
from firebreak.matching import PlaybookCandidate

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]
GROUP, VERSION = "firebreak.dev", "v1alpha1"


class Died(BaseException):
    """Stands for the process being killed: nothing after it runs."""


class DyingAction(Action):
    def __init__(self, inner: Action, when: str) -> None:
        self.inner, self.when = inner, when
        self.name = inner.name  # type: ignore[misc]
        self.params_model = inner.params_model  # type: ignore[misc]
        self.record_model = inner.record_model  # type: ignore[misc]

    def prepare(self, ctx: ActionContext, params: Any) -> Prepared:
        return self.inner.prepare(ctx, params)

    def apply(self, ctx: ActionContext, params: Any, record: dict[str, Any]) -> Applied:
        if self.when == "before_apply":
            raise Died
        self.inner.apply(ctx, params, record)
        raise Died


PLAYBOOK = PlaybookCandidate("firebreak-system", "resume", ResponsePlaybookSpec.model_validate({
    "steps": [
        {"name": "isolate", "action": "isolateNetwork"},
        {"name": "mark", "action": "label", "params": {"labels": {"flagged": "yes"}}},
        {"name": "stop", "action": "scaleDown", "params": {"replicas": 0}},
    ]}))


def engine(kube: Kube, actions: dict[ActionName, Action]) -> Engine:
    return Engine(kube=kube, config=OperatorConfig(namespace="firebreak-system"),
                  actions=actions, emit=lambda *a: None,
                  clock=lambda: dt.datetime.now(dt.UTC).replace(microsecond=0))


@pytest.mark.parametrize("dies_at", ["isolate", "mark", "stop"])
@pytest.mark.parametrize("when", ["before_apply", "after_apply"])
def test_resume_after_death(
    dies_at: str, when: str, kube: Kube, namespace: str,
    make_app: Callable[..., list[client.V1Pod]], apps: client.AppsV1Api,
    core: client.CoreV1Api, api_client: client.ApiClient,
) -> None:
    pods = make_app("web", 3)
    victim = pods[0].metadata.name
    custom = client.CustomObjectsApi(api_client)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SecurityIncident",
        "metadata": {"name": "crash"},
        "spec": {"source": "manual", "severity": "high", "title": "t",
                 "target": {"kind": "Pod", "namespace": namespace, "name": victim}}})

    step_action = {"isolate": ActionName.isolate_network, "stop": ActionName.scale_down,
                   "mark": ActionName.label}[dies_at]
    dying = registry()
    dying[step_action] = DyingAction(dying[step_action], when)
    with pytest.raises(Died):
        engine(kube, dying).reconcile(namespace, "crash", [PLAYBOOK])

    recorded = custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                   "securityincidents", "crash").get("status")
    states = {a["step"]: a["state"] for a in (recorded or {}).get("actions") or []}
    if dies_at == "isolate":
        # The first step's quarantine is replayable: its decision goes with its outcome,
        # so nothing is on record yet, and the next run plans it again.
        assert states == {}
    else:
        assert states[dies_at] == "Running"  # the decision was recorded before the apply

    engine(kube, registry()).reconcile(namespace, "crash", [PLAYBOOK])

    status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                 "securityincidents", "crash")["status"]
    assert status["phase"] == "Contained"
    assert [a["state"] for a in status["actions"]] == ["Applied"] * 3
    policies = client.NetworkingV1Api(api_client).list_namespaced_network_policy(namespace).items
    assert len(policies) == 1
    assert (apps.read_namespaced_deployment_scale("web", namespace).spec.replicas or 0) == 0
    assert status["actions"][2]["revert"]["previousReplicas"] == 3

    # And the record is good enough to undo everything.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents", "crash",
                                          {"spec": {"resolution": {"reason": "test"}}})
    engine(kube, registry()).reconcile(namespace, "crash", [PLAYBOOK])
    assert apps.read_namespaced_deployment_scale("web", namespace).spec.replicas == 3
    assert client.NetworkingV1Api(api_client).list_namespaced_network_policy(namespace).items == []
