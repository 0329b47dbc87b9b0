"""Running ``firebreak run`` as a real process, with the RBAC of its manifests.

The operator runs under the ``firebreak`` ServiceAccount from ``manifests/rbac.yaml``
(a kubeconfig holding that account's token), with the admission policies of
``manifests/admission.yaml`` bound to it, so every end-to-end test also proves the
shipped RBAC grants what the operator needs and the policies let it through.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client

from tests import admission
from tests.admission import install_rbac, service_account_kubeconfig
from tests.controlplane import LocalCluster
from tests.helpers import OPERATOR_NS, wait_for


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster: LocalCluster, crds: None, core: client.CoreV1Api,
                        tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig for the operator's ServiceAccount, as installed by the manifests,
    with the admission policies that bind it (all but the approvals policy, which judges
    every user and would refuse other tests' approvals in made-up names)."""
    install_rbac(cluster)
    admission.apply(cluster, admission.admission_documents(approvals=False))
    return service_account_kubeconfig(
        cluster, core, tmp_path_factory.mktemp("operator") / "kubeconfig")


@dataclass
class OperatorProcess:
    """``firebreak run`` in a subprocess; its output goes to a log file."""

    kubeconfig: Path
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("firebreak", path=str(Path(sys.executable).parent)) or "firebreak"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            # Metrics on a free port unless the test names one: runs side by side never
            # compete for the default.
            [exe, "run", f"--kubeconfig={self.kubeconfig}", f"--namespace={OPERATOR_NS}",
             "--verbose", "--metrics-address=127.0.0.1:0", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        log.close()

    def kill(self) -> None:
        """SIGKILL: no clean-up, no last status write — the crash case."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def start_operator(operator_kubeconfig: Path, tmp_path: Path
                   ) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(*extra_args: str) -> OperatorProcess:
        op = OperatorProcess(operator_kubeconfig, tmp_path / "operator.log", list(extra_args))
        op.start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


def incident_status(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, object]:
    obj = custom.get_namespaced_custom_object("firebreak.dev", "v1alpha1", namespace,
                                              "securityincidents", name)
    return obj.get("status") or {}  # type: ignore[no-any-return]


def wait_phase(custom: client.CustomObjectsApi, namespace: str, name: str, phase: str,
               op: OperatorProcess, timeout: float = 60) -> dict[str, object]:
    def probe() -> dict[str, object] | None:
        assert op.alive(), f"the operator exited:\n{op.log()[-4000:]}"
        status = incident_status(custom, namespace, name)
        return status if status.get("phase") == phase else None

    try:
        return wait_for(probe, timeout=timeout, what=f"incident {name} to be {phase}")
    except AssertionError:
        print(op.log()[-6000:])
        print(incident_status(custom, namespace, name))
        raise
