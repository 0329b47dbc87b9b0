"""Seen and heard, end to end: ``firebreak run`` under the shipped RBAC and admission
policies (the approvals policy included), a real Prometheus scraping its metrics and
evaluating the shipped alert rules, a real HTTP receiver on loopback for the
notifications, and a person with a client certificate of the cluster's CA using the
responder's CLI as a kubectl plugin.

One incident awaits approval (a JSON and a Slack-shaped notification say so), is
approved by ``kubectl firebreak approve`` in the person's own name, is contained (both
notifications again) and moves the time-to-contain histogram in Prometheus; its
evidence verifies, and no longer does once an item is tampered with. A second
incident's step fails, and FirebreakStepsFailing fires in Prometheus.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests import admission
from tests.alerting import PrometheusServer
from tests.conftest import REPO
from tests.controlplane import LocalCluster
from tests.controlplane.cluster import _free_ports
from tests.controlplane.pki import Authority
from tests.e2e.conftest import OperatorProcess, incident_status, wait_phase
from tests.helpers import GROUP, OPERATOR_NS, VERSION, create_incident, create_playbook, wait_for
from tests.receiver import Receiver, receiving

pytestmark = [pytest.mark.cluster, pytest.mark.alerting]
PERSON = "dana"
RULES = REPO / "manifests" / "monitoring" / "prometheusrule.yaml"


def _binding(kind: str, name: str, role: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, str] = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole" if kind == "ClusterRoleBinding" else "Role",
                        "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": PERSON}]}


@pytest.fixture
def person(operator_kubeconfig: Path, cluster: LocalCluster, tmp_path: Path) -> Iterator[Path]:
    """A responder with a client certificate, an approver who may read the evidence; and
    the approvals policy, which holds spec.approval.by to whoever writes it."""
    docs = [_binding("ClusterRoleBinding", "firebreak-e2e-responder", "firebreak-approver"),
            _binding("RoleBinding", "firebreak-e2e-evidence", "firebreak-evidence-reader",
                     OPERATOR_NS)]
    approvals = [d for d in admission.admission_documents(approvals=True)
                 if d["metadata"]["name"] == admission.APPROVALS_POLICY]
    admission.apply(cluster, [*docs, *approvals])
    path = Authority(cluster.pki).kubeconfig(tmp_path / f"{PERSON}.kubeconfig", cluster.server,
                                             PERSON, PERSON)
    yield path
    admission.delete(cluster, [*docs, *approvals])


def plugin(cluster: LocalCluster, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``kubectl firebreak ...``: the cluster's kubectl finds the plugin on PATH, and the
    plugin the person's kubeconfig in $KUBECONFIG, as kubectl hands it over."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(cluster.binaries["kubectl"]), "firebreak", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def notification_secret(core: client.CoreV1Api, name: str, url: str) -> None:
    core.create_namespaced_secret(OPERATOR_NS, client.V1Secret(
        metadata=client.V1ObjectMeta(name=name), string_data={"url": url}))


def rule_file() -> str:
    return yaml.safe_dump({"groups": yaml.safe_load(RULES.read_text())["spec"]["groups"]})


def events_at(receiver: Receiver, path: str) -> list[Any]:
    return [b.get("event") or b.get("text") for b in receiver.bodies(path)]


@pytest.fixture
def secrets(core: client.CoreV1Api, namespace: str) -> Iterator[dict[str, str]]:
    names = {"pager": f"pager-{namespace}", "chat": f"chat-{namespace}"}
    yield names
    for name in names.values():
        core.delete_namespaced_secret(name, OPERATOR_NS)


def test_an_incident_is_seen_and_heard(
    start_operator: Callable[..., OperatorProcess], person: Path, cluster: LocalCluster,
    make_app: Callable[..., list[Any]], custom: client.CustomObjectsApi,
    core: client.CoreV1Api, namespace: str, secrets: dict[str, str],
) -> None:
    (pod,) = make_app("web", 1)
    book, broken = f"careful-{namespace}", f"broken-{namespace}"
    (metrics_port,) = _free_ports(1)
    with receiving() as receiver, PrometheusServer(
            rules=rule_file(), scrape_configs=[{
                "job_name": "firebreak-metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}]) as prometheus:
        notification_secret(core, secrets["pager"], f"{receiver.url}/pager")
        notification_secret(core, secrets["chat"], f"{receiver.url}/chat")
        create_playbook(custom, book, {
            "match": {"namespaces": [namespace], "alertNames": ["Miner"]},
            "approval": {"policy": "manual", "timeoutSeconds": 600},
            "steps": [{"name": "evidence", "action": "snapshot", "params": {"tailLines": 10}},
                      {"name": "isolate", "action": "isolateNetwork"}],
            "notifications": [
                {"name": "pager", "events": ["AwaitingApproval", "Contained"],
                 "secretRef": {"name": secrets["pager"]}},
                {"name": "chat", "events": ["AwaitingApproval", "Contained"],
                 "secretRef": {"name": secrets["chat"]}, "format": "slack",
                 "message": "${event}: ${incident} (${severity}) ${detail}"}]})
        create_playbook(custom, broken, {
            "match": {"namespaces": [namespace], "alertNames": ["Ghost"]},
            "steps": [{"name": "isolate", "action": "isolateNetwork"}]})
        op = start_operator(f"--metrics-address=127.0.0.1:{metrics_port}")
        try:
            _the_flow(op, cluster, person, custom, core, namespace, pod.metadata.name, book,
                      receiver, prometheus)
        except (AssertionError, subprocess.SubprocessError):
            print(op.log()[-6000:])
            print(prometheus.log_tail())
            raise
        finally:
            for name in (book, broken):
                custom.delete_namespaced_custom_object(GROUP, VERSION, OPERATOR_NS,
                                                       "responseplaybooks", name)


def _the_flow(op: OperatorProcess, cluster: LocalCluster, person: Path,
              custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str,
              pod: str, book: str, receiver: Receiver, prometheus: PrometheusServer) -> None:
    create_incident(custom, namespace, "miner", {"kind": "Pod", "namespace": namespace,
                                                 "name": pod}, alertName="Miner")
    wait_phase(custom, namespace, "miner", "AwaitingApproval", op)

    # Told, both ways, that a person is needed.
    wait_for(lambda: events_at(receiver, "/pager") and events_at(receiver, "/chat"),
             what="the AwaitingApproval notifications")
    (waiting,) = receiver.bodies("/pager")
    assert (waiting["event"], waiting["incident"], waiting["severity"]) == (
        "AwaitingApproval", {"namespace": namespace, "name": "miner"}, "critical")
    assert receiver.bodies("/chat") == [{"text": f"AwaitingApproval: {namespace}/miner "
                                                 f"(critical) waiting up to 600s for "
                                                 f"spec.approval"}]

    # The person approves through kubectl, in their own name.
    listed = plugin(cluster, person, "list", "-n", namespace)
    assert listed.returncode == 0, listed.stderr
    assert "miner" in listed.stdout and "AwaitingApproval" in listed.stdout
    approved = plugin(cluster, person, "approve", "miner", "-n", namespace,
                      "--reason", "seen the miner")
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == f"incident {namespace}/miner approved by {PERSON}"
    spec = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents",
                                               "miner")["spec"]
    assert spec["approval"] == {"decision": "approve", "by": PERSON, "reason": "seen the miner"}

    status = wait_phase(custom, namespace, "miner", "Contained", op)
    wait_for(lambda: len(receiver.bodies("/pager")) == 2 and len(receiver.bodies("/chat")) == 2,
             what="the Contained notifications")
    contained = receiver.bodies("/pager")[1]
    assert (contained["event"], contained["phase"], contained["playbook"]) == (
        "Contained", "Contained", f"{OPERATOR_NS}/{book}")
    assert receiver.bodies("/chat")[1]["text"].startswith(
        f"Contained: {namespace}/miner (critical) ")
    # Each delivery is recorded after it is made: by the write after Contained's.
    def recorded() -> dict[str, Any] | None:
        now = custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                  "securityincidents", "miner")["status"]
        return now if len(now.get("deliveries") or ()) == 4 else None

    status = wait_for(recorded, what="the Contained deliveries on record")
    assert [(d["notification"], d["event"], d["state"]) for d in status["deliveries"]] == [
        ("pager", "AwaitingApproval", "Sent"), ("chat", "AwaitingApproval", "Sent"),
        ("pager", "Contained", "Sent"), ("chat", "Contained", "Sent")]

    # Prometheus saw the incident contained, under its playbook.
    seconds = status["timeToContainSeconds"]
    series = f'firebreak_time_to_contain_seconds_count{{playbook="{OPERATOR_NS}/{book}"}}'
    (sample,) = prometheus.wait_until(lambda: prometheus.query(series), timeout=60,
                                      what="the time-to-contain histogram in Prometheus")
    assert sample["value"][1] == "1"
    total = prometheus.query(series.replace("_count", "_sum"))[0]["value"][1]
    assert float(total) == pytest.approx(seconds, abs=0.01)
    # The incident gauges, from the watch of incidents.
    prometheus.wait_until(
        lambda: prometheus.query('firebreak_incidents{phase="Contained",source="manual"} >= 1'),
        timeout=60, what="the contained incident in firebreak_incidents")

    # A step that fails fires the alert on the responder.
    create_incident(custom, namespace, "ghost", {"kind": "Pod", "namespace": namespace,
                                                 "name": "no-such-pod"}, alertName="Ghost")
    wait_phase(custom, namespace, "ghost", "Failed", op)
    alert = prometheus.wait_for_alert("FirebreakStepsFailing", timeout=60)
    assert alert["labels"]["action"] == "isolateNetwork"
    assert alert["labels"]["outcome"] in ("failed", "refused")

    # The evidence verifies against the incident's record, as the person reads it...
    verified = plugin(cluster, person, "evidence", "verify", "miner", "-n", namespace)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "every SHA-256 matches the incident's record" in verified.stdout
    # ... and not once an item is changed. Evidence is immutable: changing it takes a
    # delete and a create, as an intruder with Secret access in the namespace could.
    (recorded,) = [a["evidence"] for a in incident_status(custom, namespace, "miner")["actions"]
                   if a["step"] == "evidence"]
    first = recorded[0]
    stored = core.read_namespaced_secret(first["name"], OPERATOR_NS)
    assert stored.immutable is True
    victim = next(i["key"] for i in first["items"] if i["key"] != "index.yaml")
    data = dict(stored.data)
    data[victim] = base64.b64encode(b"nothing to see here\n").decode()
    core.delete_namespaced_secret(first["name"], OPERATOR_NS)
    core.create_namespaced_secret(OPERATOR_NS, client.V1Secret(
        metadata=client.V1ObjectMeta(name=first["name"], labels=stored.metadata.labels),
        data=data, immutable=True))
    tampered = plugin(cluster, person, "evidence", "verify", "miner", "-n", namespace)
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    assert f"Secret {OPERATOR_NS}/{first['name']} {victim}: changed: SHA-256" in tampered.stdout

    # The timeline as the person reads it; and the end of the incident, in their name.
    shown = plugin(cluster, person, "show", "miner", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    assert f"  Decision:  approve by {PERSON}: seen the miner" in shown.stdout
    assert "NotificationSent: Contained to chat" in shown.stdout
    resolved = plugin(cluster, person, "resolve", "miner", "-n", namespace,
                      "--reason", "miner removed")
    assert resolved.returncode == 0, resolved.stderr
    wait_phase(custom, namespace, "miner", "Resolved", op)
    spec = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents",
                                               "miner")["spec"]
    assert spec["resolution"] == {"reason": "miner removed", "by": PERSON}
