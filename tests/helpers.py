"""Small waiting helpers for tests that observe an eventually-consistent cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from kubernetes import client

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Call ``probe`` until it returns something truthy; return that, or fail."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def deployment(name: str, replicas: int, **pod_spec: object) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name="app", image="nginx:1.27")],
                    **pod_spec,  # type: ignore[arg-type]
                ),
            ),
        ),
    )


def running_pods(core: client.CoreV1Api, namespace: str, app: str) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return [p for p in pods
            if p.status.phase == "Running" and p.metadata.deletion_timestamp is None]


def record_calls(monkeypatch: pytest.MonkeyPatch, api: object, method: str) -> list[tuple[Any, ...]]:
    """Let ``api.method`` run as usual, but record the arguments of every call.

    For "a re-apply writes nothing" on objects whose resourceVersion moves anyway
    (kwok's node heartbeats, a Deployment's status updates by its controller).
    """
    calls: list[tuple[Any, ...]] = []
    real = getattr(api, method)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, method, spy)
    return calls


OPERATOR_NS = "firebreak-system"
GROUP, VERSION = "firebreak.dev", "v1alpha1"


def create_playbook(custom: client.CustomObjectsApi, name: str, spec: dict[str, Any],
                    namespace: str = OPERATOR_NS) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "responseplaybooks", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ResponsePlaybook",
        "metadata": {"name": name}, "spec": spec})


def create_incident(custom: client.CustomObjectsApi, namespace: str, name: str,
                    target: dict[str, Any], **spec: Any) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SecurityIncident",
        "metadata": {"name": name},
        "spec": {"source": "manual", "severity": "critical", "title": "test incident",
                 "target": target, **spec}})
