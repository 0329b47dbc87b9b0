"""Several ``firebreak run`` processes, each with its webhook on a port of its own,
and what tests and benchmarks ask of them: who holds the Lease, is a webhook up,
send an Alertmanager notification."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

from kubernetes import client

from tests.e2e.conftest import OperatorProcess
from tests.helpers import OPERATOR_NS

TOKEN = "replicas-bearer-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replicas:
    """Operator processes named replica-0, replica-1, ...; a killed one is restarted."""

    def __init__(self, kubeconfig: Path, workdir: Path, count: int, lease_seconds: float,
                 *extra_args: str) -> None:
        token = workdir / "token"
        token.write_text(TOKEN)
        self.ports = [free_port() for _ in range(count)]
        self.procs = [
            OperatorProcess(kubeconfig, workdir / f"replica-{i}.log",
                            [f"--webhook-address=127.0.0.1:{port}",
                             f"--webhook-token-file={token}",
                             f"--lease-seconds={lease_seconds}", *extra_args],
                            env={"POD_NAME": f"replica-{i}"})
            for i, port in enumerate(self.ports)]

    def start(self) -> None:
        for proc in self.procs:
            proc.start()

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-3000:]}" for p in self.procs)


def holder(coordination: client.CoordinationV1Api) -> str | None:
    try:
        lease = coordination.read_namespaced_lease("firebreak-leader", OPERATOR_NS)
    except client.ApiException:
        return None
    return lease.spec.holder_identity or None


def alert(namespace: str, app: str) -> bytes:
    return json.dumps({
        "version": "4", "status": "firing", "receiver": "firebreak",
        "groupKey": f"{{}}:{{alertname=\"CryptoMiner\", app=\"{app}\"}}",
        "groupLabels": {"alertname": "CryptoMiner"}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager.invalid",
        "alerts": [{"status": "firing", "fingerprint": f"ha-{app}",
                    "startsAt": "2026-01-01T00:00:00Z",
                    "labels": {"alertname": "CryptoMiner", "severity": "critical",
                               "namespace": namespace, "deployment": app},
                    "annotations": {"summary": f"crypto miner in {app}"}}]}).encode()


def post(port: int, body: bytes) -> int | str:
    """The answer's status, or why there was none (the replica is down)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/alertmanager", data=body, method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        return type(exc).__name__  # killed before or while answering


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return int(answer.status) == 200
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return False
