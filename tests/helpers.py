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


# --- pods on the real node --------------------------------------------------------

REAL_NODE_LABEL = "firebreak.dev/real-node"
TOOLS_IMAGE = "localhost/firebreak/busybox:local"
HTTP_PORT = 8080


def real_pod(name: str, command: str, labels: dict[str, str] | None = None) -> client.V1Pod:
    """A busybox pod for the real node: its local image is never pulled, and it
    tolerates the taint that keeps every other pod off that node."""
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": name, **(labels or {})}),
        spec=client.V1PodSpec(
            node_selector={REAL_NODE_LABEL: "true"},
            tolerations=[client.V1Toleration(key=REAL_NODE_LABEL, operator="Exists",
                                             effect="NoSchedule")],
            termination_grace_period_seconds=0,
            containers=[client.V1Container(
                name="main", image=TOOLS_IMAGE, image_pull_policy="Never",
                command=["/bin/sh", "-c", command])],
        ),
    )


def web_pod(name: str, labels: dict[str, str] | None = None, port: int = HTTP_PORT
            ) -> client.V1Pod:
    """busybox httpd on ``port`` serving a page that names the pod; it logs a line at
    start so that its container log is never empty."""
    return real_pod(name, (
        f"echo 'web {name} starting'; mkdir -p /www; echo 'hello from {name}' > /www/index.html; "
        f"exec httpd -f -v -p {port} -h /www"), labels)


def client_pod(name: str, labels: dict[str, str] | None = None) -> client.V1Pod:
    return real_pod(name, "exec sleep 100000", labels)


def start_pods(core: client.CoreV1Api, namespace: str, *pods: client.V1Pod) -> dict[str, str]:
    """Create the pods, wait until every one runs; return their IPs by name."""
    for pod in pods:
        core.create_namespaced_pod(namespace, pod)

    def ips() -> dict[str, str] | None:
        found = {}
        for pod in pods:
            live = core.read_namespaced_pod(pod.metadata.name, namespace)
            ready = any(c.type == "Ready" and c.status == "True"
                        for c in live.status.conditions or [])
            if not (ready and live.status.pod_ip):
                return None
            found[pod.metadata.name] = live.status.pod_ip
        return found

    return wait_for(ips, timeout=60, what=f"pods {[p.metadata.name for p in pods]} to run")


def fetch(kubectl: Callable[..., str], namespace: str, pod: str, ip: str,
          port: int = HTTP_PORT, timeout: int = 2) -> str | None:
    """From inside ``pod``, GET http://ip:port/ with real packets; the page, or None
    when the request was refused or timed out (both mean blocked). busybox's own
    ``wget -T`` is unreliable, so ``timeout`` bounds it."""
    try:
        return kubectl("exec", "-n", namespace, pod, "--", "timeout", str(timeout),
                       "wget", "-q", "-O", "-", f"http://{ip}:{port}/")
    except Exception:  # kubectl exits non-zero when wget fails: blocked
        return None
