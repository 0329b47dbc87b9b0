"""The world an engine test starts from: nodes, a Deployment with its ReplicaSet and
pods, incidents and playbooks, put straight into the recorder (no writes recorded)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from firebreak.api import (
    ResponsePlaybookSpec,
    Severity,
    Source,
    Target,
    TargetKind,
    signal_fields,
)
from firebreak.matching import PlaybookCandidate
from firebreak.sources.signal import Signal
from tests.engine.recorder import Obj, Recorder

OPERATOR_NS = "firebreak-system"
NS = "shop"
START = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


class Clock:
    """A clock that moves only when the test says so."""

    def __init__(self, now: dt.datetime = START) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> dt.datetime:
        self.now += dt.timedelta(seconds=seconds)
        return self.now


def add_nodes(api: Recorder, *names: str, unschedulable: tuple[str, ...] = ()) -> None:
    for name in names:
        api.add({"kind": "Node", "metadata": {"name": name, "labels": {}},
                 "spec": {"unschedulable": True} if name in unschedulable else {}})


def add_app(api: Recorder, name: str = "web", replicas: int = 3, namespace: str = NS,
            nodes: tuple[str, ...] = ("node-a", "node-b")) -> list[str]:
    """A Deployment, its ReplicaSet and ``replicas`` ready pods spread over ``nodes``;
    returns the pods' names."""
    labels = {"app": name}
    deployment = api.add({
        "kind": "Deployment", "metadata": {"name": name, "namespace": namespace,
                                           "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "app", "image": "nginx"}]}}},
        "status": {"replicas": replicas, "readyReplicas": replicas}})
    rs_labels = {**labels, "pod-template-hash": "5d9c"}
    replicaset = api.add({
        "kind": "ReplicaSet",
        "metadata": {"name": f"{name}-5d9c", "namespace": namespace, "labels": rs_labels,
                     "ownerReferences": [_owner(deployment)]},
        "spec": {"replicas": replicas, "selector": {"matchLabels": rs_labels}}})
    pods = []
    for i in range(replicas):
        pod = api.add({
            "kind": "Pod",
            "metadata": {"name": f"{name}-5d9c-{i}", "namespace": namespace,
                         "labels": {**rs_labels, "team": "shop"},
                         "ownerReferences": [_owner(replicaset)]},
            "spec": {"nodeName": nodes[i % len(nodes)],
                     "containers": [{"name": "app", "image": "nginx"}]},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True"}]}})
        pods.append(pod["metadata"]["name"])
    return pods


def _owner(obj: Obj) -> dict[str, Any]:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
            "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


def add_incident(api: Recorder, name: str = "miner", namespace: str = NS,
                 target: dict[str, Any] | None = None, **spec: Any) -> Obj:
    return api.add({
        "kind": "SecurityIncident",
        "metadata": {"name": name, "namespace": namespace,
                     "finalizers": ["firebreak.dev/finalizer"]},
        "spec": {"source": "manual", "severity": "critical", "title": "crypto miner",
                 "target": target if target is not None else
                 {"kind": "Pod", "namespace": namespace, "name": "web-5d9c-0"},
                 **spec}})


def playbook(name: str, *steps: dict[str, Any], namespace: str = OPERATOR_NS,
             **spec: Any) -> PlaybookCandidate:
    return PlaybookCandidate(namespace, name, ResponsePlaybookSpec.model_validate(
        {"steps": list(steps), **spec}))


def step(name: str, action: str, on_failure: str = "abort", **params: Any) -> dict[str, Any]:
    return {"name": name, "action": action, "onFailure": on_failure,
            **({"params": params} if params else {})}


# --- reading back ---------------------------------------------------------------


def incident(api: Recorder, name: str = "miner", namespace: str = NS) -> Obj:
    found = api.get("securityincidents", namespace, name)
    assert found is not None, f"incident {namespace}/{name} is gone"
    return found


def status(api: Recorder, name: str = "miner", namespace: str = NS) -> dict[str, Any]:
    return incident(api, name, namespace).get("status") or {}


def signals(api: Recorder, name: str = "miner", namespace: str = NS) -> dict[str, Any]:
    """The incident's signal fields as they stand (before any status write: as its
    creation implies them)."""
    return signal_fields(incident(api, name, namespace))


def states(api: Recorder, name: str = "miner", namespace: str = NS) -> dict[str, str]:
    return {a["step"]: a["state"] for a in status(api, name, namespace).get("actions") or ()}


def condition(api: Recorder, type_: str, name: str = "miner",
              namespace: str = NS) -> dict[str, Any]:
    return next(c for c in status(api, name, namespace)["conditions"] if c["type"] == type_)


def alert_signal(pod: str = "web-5d9c-0", namespace: str = NS, **changes: Any) -> Signal:
    """An Alertmanager signal about a pod of the app ``add_app`` makes."""
    base = Signal(source=Source.alertmanager, fingerprint="fp-1", severity=Severity.critical,
                  title="Crypto miner", alert_name="CryptoMiner",
                  target=Target(kind=TargetKind.pod, namespace=namespace, name=pod),
                  labels={"alertname": "CryptoMiner"})
    return base.model_copy(update=changes)
