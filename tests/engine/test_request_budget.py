"""The requests one incident costs on the common path (an alert about a pod, a
playbook that isolates it without approval, no other policy in the namespace), one
by one: intake's and the engine's, Events included (none, on this path: the outcome is
in the status, and no one waited for it). A change that adds a request to
every incident fails here, with the list to read.

The pod is read once, by intake; the quarantine decided a moment later uses that
read (``Kube.handoff``), labels the pod with its uid as a precondition, and judges
the pod as the labelling stored it."""

from __future__ import annotations

from functools import partial

import pytest

from firebreak.actions import registry
from firebreak.config import OperatorConfig
from firebreak.engine import Engine
from firebreak.events import post_event
from firebreak.intake import Intake
from firebreak.kube import Kube
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


def pipeline(api: Recorder, clock: Clock, view: bool = True) -> tuple[Kube, Intake, Engine]:
    """An app's pods on one node; intake and the engine over the recording API, with
    the namespace's policies from the watch's view (listed, without ``view``)."""
    add_nodes(api, "node-a")
    add_app(api)
    config = OperatorConfig(namespace=OPERATOR_NS)
    kube = api.kube()
    intake = Intake(kube, config, clock=clock, retry_for=0)
    engine = Engine(kube=kube, config=config, actions=registry(),
                    emit=partial(post_event, kube), clock=clock,
                    policies=watched(api).in_namespace if view else None)
    return kube, intake, engine


@pytest.mark.parametrize("view", [False, True], ids=["listed", "watched"])
def test_one_alert_about_a_pod_costs_five_requests_six_without_the_watch(
        api: Recorder, clock: Clock, view: bool) -> None:
    _, intake, engine = pipeline(api, clock, view)
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
        *listing,
        # No write of the decision first: it is replayable (see Prepared.replayable).
        ("POST", POLICIES),                             # the quarantine policy
        ("PATCH", f"{POD}/web-5d9c-0"),                 # the quarantine label
        ("PATCH", f"{INCIDENTS}/{name}/status"),        # triaged, decided, Contained
    ]
    assert condition(api, "Contained", name)["status"] == "True"
    assert condition(api, "Isolated", name)["status"] == "True"
    # The first status write recorded the signal the creation counted.
    assert signals(api, name)["signalCount"] == 1
    assert "signalCount" in api.get("securityincidents", NS, name)["status"]



def test_alerts_about_one_pod_arriving_together_read_it_once_each_at_intake(
        api: Recorder, clock: Clock) -> None:
    """Two alerts about one pod, both stored before the engine answers either: each
    quarantine uses the latest of intake's reads, and neither reads the pod again. The
    second judges a read from before the first's label, and still holds."""
    kube, intake, engine = pipeline(api, clock)
    first = intake.record(alert_signal(fingerprint="fp-1"))
    second = intake.record(alert_signal(fingerprint="fp-2"))
    api.requests.clear()
    for recorded in (first, second):
        engine.reconcile(NS, recorded.name,
                         [playbook("isolate", step("isolate", "isolateNetwork"))],
                         api.get("securityincidents", NS, recorded.name))
    assert ("GET", f"{POD}/web-5d9c-0") not in api.requests
    assert [r for r in api.requests if r == ("PATCH", f"{POD}/web-5d9c-0")] == \
        [("PATCH", f"{POD}/web-5d9c-0")] * 2
    labels = (api.get("pods", NS, "web-5d9c-0") or {})["metadata"]["labels"]
    for recorded in (first, second):
        assert condition(api, "Isolated", recorded.name)["status"] == "True"
        assert any(k.startswith("quarantine.firebreak.dev/") and recorded.name in k
                   for k in labels)
    assert len(kube.handoff) == 0


def test_the_pod_is_read_again_when_intake_did_not_read_it_a_moment_ago(
        api: Recorder, clock: Clock) -> None:
    kube, intake, engine = pipeline(api, clock, view=False)
    recorded = intake.record(alert_signal())
    # Intake's read is too old to serve (another replica's intake: never handed over).
    kube.handoff.ttl = 0.0
    api.requests.clear()
    engine.reconcile(NS, recorded.name, [playbook("isolate", step("isolate", "isolateNetwork"))],
                     api.get("securityincidents", NS, recorded.name))
    assert api.requests[0] == ("GET", f"{POD}/web-5d9c-0")
    assert condition(api, "Isolated", recorded.name)["status"] == "True"
    assert len(kube.handoff) == 0


def test_a_pod_relabelled_after_intake_read_it_is_judged_and_excluded_as_stored(
        api: Recorder, clock: Clock) -> None:
    # A policy opening every pod labelled tier=open to all ingress.
    api.add({"kind": "NetworkPolicy", "metadata": {"name": "open", "namespace": NS},
             "spec": {"podSelector": {"matchLabels": {"tier": "open"}},
                      "policyTypes": ["Ingress"], "ingress": [{}]}})
    _, intake, engine = pipeline(api, clock)
    recorded = intake.record(alert_signal())
    # Relabelled between intake's read and the quarantine: "open" now selects it.
    api.request("PATCH", f"{POD}/web-5d9c-0", body='{"metadata": {"labels": {"tier": "open"}}}',
                headers={"Content-Type": "application/merge-patch+json"})
    engine.reconcile(NS, recorded.name, [playbook("isolate", step("isolate", "isolateNetwork"))],
                     api.get("securityincidents", NS, recorded.name))
    # Judged from the pod as labelled, not as intake read it: "open" was excluded, and
    # the quarantine holds.
    selector = (api.get("networkpolicies", NS, "open") or {})["spec"]["podSelector"]
    assert any(e["key"].startswith("quarantine.firebreak.dev/")
               for e in selector.get("matchExpressions") or [])
    assert condition(api, "Isolated", recorded.name)["status"] == "True"


def test_a_quarantine_judges_its_pods_twice_when_nothing_needed_excluding(
        api: Recorder, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once as planned, once as applied (before labelling, for exclusions); the
    verdict after labelling reuses that judgement when the pods came back as judged
    and no policy was changed. (After an exclusion it judges again: the relabelled
    pod's test above.)"""
    from firebreak.actions import network

    judged: list[str] = []
    real = network.excess

    def counting(pod: object, *args: object, **kwargs: object) -> object:
        judged.append(pod.name)  # type: ignore[attr-defined]
        return real(pod, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(network, "excess", counting)
    _, intake, engine = pipeline(api, clock)
    recorded = intake.record(alert_signal())
    engine.reconcile(NS, recorded.name, [playbook("isolate", step("isolate", "isolateNetwork"))],
                     api.get("securityincidents", NS, recorded.name))
    assert condition(api, "Isolated", recorded.name)["status"] == "True"
    assert judged == ["web-5d9c-0", "web-5d9c-0"]
