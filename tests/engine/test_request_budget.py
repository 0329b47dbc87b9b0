"""The requests one incident costs on the common path (an alert about a pod, a
playbook that isolates it without approval, no other policy in the namespace), one
by one: intake's and the engine's, Events included. A change that adds a request to
every incident fails here, with the list to read."""

from __future__ import annotations

from functools import partial

import pytest

from firebreak.actions import registry
from firebreak.config import OperatorConfig
from firebreak.engine import Engine
from firebreak.events import post_event
from firebreak.intake import Intake
from firebreak.views import PolicyView
from tests.engine.recorder import Recorder
from tests.engine.world import (
    NS,
    OPERATOR_NS,
    Clock,
    add_app,
    add_nodes,
    alert_signal,
    condition,
    playbook,
    signals,
    step,
)

POD = f"/api/v1/namespaces/{NS}/pods"
INCIDENTS = f"/apis/firebreak.dev/v1alpha1/namespaces/{NS}/securityincidents"
POLICIES = f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies"


def watched(api: Recorder) -> PolicyView:
    """The operator's view of the policies, as its watch would have delivered them."""
    view = PolicyView()
    for policy in api.all("networkpolicies"):
        view.upsert(policy)
    view.mark_synced()
    return view


@pytest.mark.parametrize("view", [False, True], ids=["listed", "watched"])
def test_one_alert_about_a_pod_costs_eight_requests_nine_without_the_watch(
        api: Recorder, clock: Clock, view: bool) -> None:
    add_nodes(api, "node-a")
    add_app(api)
    config = OperatorConfig(namespace=OPERATOR_NS)
    kube = api.kube()
    intake = Intake(kube, config, clock=clock, retry_for=0)
    engine = Engine(kube=kube, config=config, actions=registry(),
                    emit=partial(post_event, kube), clock=clock,
                    policies=watched(api).in_namespace if view else None)
    # The ReplicaSet behind the pod is read once for all its pods: not on this path.
    intake.record(alert_signal(pod="web-5d9c-1", fingerprint="warm-up"))
    api.requests.clear()

    recorded = intake.record(alert_signal())
    name = recorded.name
    engine.reconcile(NS, name, [playbook("isolate", step("isolate", "isolateNetwork"))],
                     api.get("securityincidents", NS, name))

    # The namespace's policies: from the watch's view, else listed.
    listing = [] if view else [("GET", POLICIES)]
    assert api.requests == [
        ("GET", f"{POD}/web-5d9c-0"),                   # intake: the pod's workload
        ("POST", INCIDENTS),                            # the incident, its first signal
        ("GET", f"{POD}/web-5d9c-0"),                   # prepare: the pod as it is
        *listing,
        ("PATCH", f"{INCIDENTS}/{name}/status"),        # the decision, before acting
        ("POST", POLICIES),                             # the quarantine policy
        ("PATCH", f"{POD}/web-5d9c-0"),                 # the quarantine label
        ("POST", f"/api/v1/namespaces/{NS}/events"),    # StepsApplied
        ("PATCH", f"{INCIDENTS}/{name}/status"),        # Contained
    ]
    assert condition(api, "Contained", name)["status"] == "True"
    assert condition(api, "Isolated", name)["status"] == "True"
    # The first status write recorded the signal the creation counted.
    assert signals(api, name)["signalCount"] == 1
    assert "signalCount" in api.get("securityincidents", NS, name)["status"]

