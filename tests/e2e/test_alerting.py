"""Real alerting systems create incidents that the operator contains.

Prometheus fires a rule whose labels name a real pod on the local control plane;
Alertmanager delivers it with a bearer token to ``firebreak run``'s webhook; the
incident appears and is contained (the NetworkPolicy exists). The poller path is
the same, with the operator asking Prometheus itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from firebreak.actions.base import IncidentRef
from tests.alerting import AlertingStack
from tests.controlplane.cluster import _free_ports
from tests.e2e.conftest import OperatorProcess, wait_phase
from tests.helpers import GROUP, VERSION, create_playbook, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.alerting]
TOKEN = "e2e-bearer-token"


def rule(alert: str, namespace: str, pod: str) -> str:
    return f"""
groups:
  - name: firebreak-e2e
    rules:
      - alert: {alert}
        expr: vector(1)
        labels:
          namespace: {namespace}
          pod: {pod}
          severity: critical
        annotations:
          summary: crypto-miner traffic from {pod}
"""


def incidents(custom: client.CustomObjectsApi, namespace: str) -> list[dict[str, Any]]:
    return custom.list_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, "securityincidents")["items"]


def contained(custom: client.CustomObjectsApi, api_client: client.ApiClient, namespace: str,
              op: OperatorProcess, source: str) -> dict[str, Any]:
    (incident,) = wait_for(lambda: incidents(custom, namespace), timeout=90,
                           what=f"an incident from {source}")
    assert incident["spec"]["source"] == source
    status = wait_phase(custom, namespace, incident["metadata"]["name"], "Contained", op)
    policies = client.NetworkingV1Api(api_client).list_namespaced_network_policy(namespace).items
    key = IncidentRef(namespace, incident["metadata"]["name"], "").key
    assert [p.metadata.name for p in policies] == [f"firebreak-quarantine-{key}"]
    return status


def test_alertmanager_delivers_and_the_pod_is_contained(
    start_operator: Callable[..., OperatorProcess], make_app: Callable[..., list[Any]],
    custom: client.CustomObjectsApi, api_client: client.ApiClient, namespace: str,
    tmp_path: Path,
) -> None:
    create_playbook(custom, "miner", {"match": {"alertNames": ["MinerTraffic"]},
                                      "steps": [{"name": "isolate", "action": "isolateNetwork"}]},
                    namespace=namespace)
    (pod,) = make_app("web", 1)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    (port,) = _free_ports(1)
    op = start_operator(f"--webhook-address=127.0.0.1:{port}", f"--webhook-token-file={token_file}")
    with AlertingStack.started(webhook_url=f"http://127.0.0.1:{port}/alertmanager",
                               rules=rule("MinerTraffic", namespace, pod.metadata.name),
                               token=TOKEN) as stack:
        try:
            status = contained(custom, api_client, namespace, op, "alertmanager")
        except AssertionError:
            print(stack.log_tails())
            raise
    assert status["signalCount"] >= 1
    assert status["actions"][0]["objects"][1]["name"] == pod.metadata.name


def test_the_poller_finds_firing_alerts(
    start_operator: Callable[..., OperatorProcess], make_app: Callable[..., list[Any]],
    custom: client.CustomObjectsApi, api_client: client.ApiClient, namespace: str,
) -> None:
    create_playbook(custom, "miner", {"match": {"sources": ["prometheus"]},
                                      "steps": [{"name": "isolate", "action": "isolateNetwork"}]},
                    namespace=namespace)
    (pod,) = make_app("web", 1)
    (unused,) = _free_ports(1)  # no Alertmanager receiver is needed on this path
    with AlertingStack.started(webhook_url=f"http://127.0.0.1:{unused}/nowhere",
                               rules=rule("PolledAlert", namespace, pod.metadata.name)) as stack:
        stack.prometheus.wait_for_alert("PolledAlert", timeout=30)
        op = start_operator("--webhook-address=", f"--prometheus-url={stack.prometheus.url}",
                            "--prometheus-interval=1")
        status = contained(custom, api_client, namespace, op, "prometheus")
    assert status["actions"][0]["state"] == "Applied"
