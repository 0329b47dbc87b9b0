"""`make demo`: Firebreak's main job, start to end, on the local control plane.

Starts the control plane, installs the CRDs and the ready playbooks, deploys a
small shop, runs the operator, raises a crypto-miner incident on one pod, shows
the incident moving through its phases and the isolating NetworkPolicy, then
resolves it and shows everything reverted. It stops everything it started.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.controlplane import LocalCluster
from tests.controlplane.cluster import _free_ports

REPO = Path(__file__).resolve().parent.parent
NS = "shop"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def main() -> int:
    began = time.monotonic()
    say("Starting a local Kubernetes control plane (etcd, kube-apiserver, controllers, kwok nodes)")
    with LocalCluster.started(nodes=3) as cluster:
        kubectl = cluster.kubectl
        print(f"ready in {time.monotonic() - began:.1f}s")
        print(kubectl("get", "nodes"))

        say("Installing Firebreak: CRDs, namespace, RBAC, and the playbooks in playbooks/")
        kubectl("apply", "-k", str(REPO / "crds"))
        kubectl("wait", "--for=condition=Established", "--timeout=60s",
                "crd/securityincidents.firebreak.dev", "crd/responseplaybooks.firebreak.dev")
        kubectl("apply", "-f", str(REPO / "manifests" / "namespace.yaml"),
                "-f", str(REPO / "manifests" / "rbac.yaml"))
        kubectl("apply", "-f", str(REPO / "playbooks"))
        print(kubectl("get", "responseplaybooks", "-n", "firebreak-system"))

        say("Deploying the shop: a storefront with 3 replicas")
        kubectl("create", "namespace", NS)
        kubectl("create", "deployment", "storefront", "-n", NS, "--image=nginx:1.27",
                "--replicas=3")
        kubectl("rollout", "status", "deployment/storefront", "-n", NS, "--timeout=90s")
        pods = json.loads(kubectl("get", "pods", "-n", NS, "-o", "json"))["items"]
        victim = sorted(p["metadata"]["name"] for p in pods)[0]
        print(kubectl("get", "pods", "-n", NS, "-o", "wide"))

        with tempfile.TemporaryDirectory(prefix="firebreak-demo-") as tmp:
            log_path = Path(tmp) / "operator.log"
            token_file = Path(tmp) / "token"
            token_file.write_text(secrets.token_urlsafe(24))
            (port,) = _free_ports(1)
            webhook = f"http://127.0.0.1:{port}"
            say(f"Running the operator: firebreak run (alert webhook on {webhook})")
            with log_path.open("wb") as log:
                operator = subprocess.Popen(
                    [str(Path(sys.executable).parent / "firebreak"), "run",
                     f"--kubeconfig={cluster.kubeconfig}", "--namespace=firebreak-system",
                     f"--webhook-address=127.0.0.1:{port}", f"--webhook-token-file={token_file}"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                wait_ready(webhook, operator, log_path)
                return run_incident(cluster, victim, operator, log_path, webhook,
                                    token_file.read_text())
            finally:
                operator.terminate()
                operator.wait(timeout=20)
                say("Stopping the operator and the control plane")


def watch_phases(cluster: LocalCluster, until: str, operator: subprocess.Popen[bytes],
                 log_path: Path, timeout: float = 60) -> None:
    seen = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if operator.poll() is not None:
            raise SystemExit(f"the operator stopped:\n{log_path.read_text()[-3000:]}")
        out = cluster.kubectl("get", "securityincidents", "-n", NS, "--no-headers",
                              "-o", "custom-columns=PHASE:.status.phase")
        phase = out.strip() or "<none>"
        if phase != seen:
            print(cluster.kubectl("get", "securityincidents", "-n", NS).rstrip())
            seen = phase
        if phase == until:
            return
        if phase == "Failed":
            break
        time.sleep(0.2)
    print(cluster.kubectl("get", "securityincident", "-n", NS, "-o", "yaml"))
    raise SystemExit(f"the incident did not reach {until}")


def wait_ready(webhook: str, operator: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if operator.poll() is not None:
            raise SystemExit(f"the operator stopped:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{webhook}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the operator's webhook did not become ready")


def run_incident(cluster: LocalCluster, victim: str, operator: subprocess.Popen[bytes],
                 log_path: Path, webhook: str, token: str) -> int:
    kubectl = cluster.kubectl
    say(f"An alert: a crypto-miner in pod {victim}. Alertmanager posts it to the webhook")
    alert = {
        "version": "4", "status": "firing", "receiver": "firebreak", "groupLabels": {},
        "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "CryptoMinerDetected", "severity": "critical",
                       "namespace": NS, "pod": victim},
            "annotations": {"summary": f"Stratum mining traffic from {victim}"},
            "startsAt": "2026-11-25T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
        }],
    }
    request = urllib.request.Request(
        f"{webhook}/alertmanager", data=json.dumps(alert).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    print(f"HTTP {response.status}: {answer}")
    incident = answer["incidents"][0]["name"]  # derived from the fingerprint
    watch_phases(cluster, "Contained", operator, log_path)

    say("Contained. The isolating NetworkPolicy and the quarantined pod:")
    print(kubectl("get", "networkpolicy", "-n", NS))
    print(kubectl("get", "pods", "-n", NS, "-L", f"quarantine.firebreak.dev/{incident}"))
    print(kubectl("get", "deployment", "storefront", "-n", NS))
    print(kubectl("get", "securityincident", incident, "-n", NS, "-o",
                  "jsonpath={range .status.actions[*]}{.step}{'\\t'}{.state}{'\\t'}"
                  "{.message}{'\\n'}{end}"))
    seconds = kubectl("get", "securityincident", incident, "-n", NS, "-o",
                      "jsonpath={.status.timeToContainSeconds}")
    print(f"time to contain: {seconds}s (from the alert's arrival)")

    say("A person resolves it: kubectl patch ... spec.resolution")
    kubectl("patch", "securityincident", incident, "-n", NS, "--type=merge", "-p",
            json.dumps({"spec": {"resolution": {"reason": "miner removed, image rebuilt",
                                                "by": "demo"}}}))
    watch_phases(cluster, "Resolved", operator, log_path)

    say("Resolved. Everything reverted (the evidence is kept on purpose):")
    policies = kubectl("get", "networkpolicy", "-n", NS, "-o", "name")
    print(f"NetworkPolicies in {NS}: {policies.strip() or 'none'}")
    kubectl("rollout", "status", "deployment/storefront", "-n", NS, "--timeout=90s")
    print(kubectl("get", "pods", "-n", NS, "-L", f"quarantine.firebreak.dev/{incident}"))
    print(kubectl("get", "deployment", "storefront", "-n", NS))
    print(kubectl("get", "secrets", "-n", NS, "-l", "firebreak.dev/evidence=true"))
    print(kubectl("get", "events", "-n", NS, "--field-selector",
                  f"involvedObject.name={incident}", "--sort-by=.lastTimestamp"))
    return 0 if not policies.strip() else 1


if __name__ == "__main__":
    sys.exit(main())
