"""Acting as the operator, and installing its admission policies, in tests.

The operator's identity is its ServiceAccount as ``manifests/rbac.yaml`` installs it;
a kubeconfig with a token for it lets a test (or ``firebreak run``) make exactly the
requests the operator would, so the API server judges them with the shipped RBAC and
admission policies.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.conftest import REPO
from tests.controlplane import LocalCluster
from tests.helpers import OPERATOR_NS

ADMISSION = REPO / "manifests" / "admission.yaml"
SERVICE_ACCOUNT = "firebreak"
USERNAME = f"system:serviceaccount:{OPERATOR_NS}:{SERVICE_ACCOUNT}"
# Applies to every user, not only the operator: tests that write approvals in other
# names (as the admin) would be refused while it is installed.
APPROVALS_POLICY = "firebreak-approvals"


def install_rbac(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "-f", str(REPO / "manifests" / "namespace.yaml"),
                    "-f", str(REPO / "manifests" / "rbac.yaml"))


def admission_documents(*, approvals: bool) -> list[dict[str, Any]]:
    """The objects of ``manifests/admission.yaml``; without the approvals policy (and
    its binding) unless asked for."""
    docs = [d for d in yaml.safe_load_all(ADMISSION.read_text()) if d]
    if approvals:
        return docs
    return [d for d in docs if d["metadata"]["name"] != APPROVALS_POLICY]


def apply(cluster: LocalCluster, docs: list[dict[str, Any]]) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def delete(cluster: LocalCluster, docs: list[dict[str, Any]]) -> None:
    cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-",
                    input=yaml.safe_dump_all(docs))


def service_account_kubeconfig(cluster: LocalCluster, core: client.CoreV1Api, path: Path) -> Path:
    """A kubeconfig holding a token of the operator's ServiceAccount."""
    token = core.create_namespaced_service_account_token(
        SERVICE_ACCOUNT, OPERATOR_NS,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[], expiration_seconds=24 * 3600)),
    ).status.token
    ca = base64.b64encode((cluster.pki / "ca.crt").read_bytes()).decode()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "firebreak",
        "clusters": [{"name": "local", "cluster": {"server": cluster.server,
                                                   "certificate-authority-data": ca}}],
        "users": [{"name": "firebreak", "user": {"token": token}}],
        "contexts": [{"name": "firebreak", "context": {"cluster": "local", "user": "firebreak"}}],
    }))
    path.chmod(0o600)
    return path
