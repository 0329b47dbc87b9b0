"""`make demo`: Firebreak's main job, start to end, on the local control plane.

Starts the control plane, installs the CRDs and the ready playbooks, deploys a
small shop, runs the operator, raises a crypto-miner incident on one pod, shows
the incident moving through its phases and the isolating NetworkPolicy, then
resolves it and shows everything reverted. It stops everything it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.controlplane import LocalCluster

REPO = Path(__file__).resolve().parent.parent
NS = "shop"
INCIDENT = "miner-in-storefront"


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
            say("Running the operator: firebreak run")
            with log_path.open("wb") as log:
                operator = subprocess.Popen(
                    [str(Path(sys.executable).parent / "firebreak"), "run",
                     f"--kubeconfig={cluster.kubeconfig}", "--namespace=firebreak-system"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                return run_incident(cluster, victim, operator, log_path)
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


def run_incident(cluster: LocalCluster, victim: str, operator: subprocess.Popen[bytes],
                 log_path: Path) -> int:
    kubectl = cluster.kubectl
    say(f"An alert: a crypto-miner in pod {victim}. Creating the SecurityIncident")
    incident = {
        "apiVersion": "firebreak.dev/v1alpha1", "kind": "SecurityIncident",
        "metadata": {"name": INCIDENT, "namespace": NS},
        "spec": {"source": "manual", "severity": "critical", "alertName": "CryptoMinerDetected",
                 "title": f"Stratum mining traffic from {victim}",
                 "target": {"kind": "Pod", "namespace": NS, "name": victim}},
    }
    kubectl("apply", "-f", "-", input=json.dumps(incident))
    watch_phases(cluster, "Contained", operator, log_path)

    say("Contained. The isolating NetworkPolicy and the quarantined pod:")
    print(kubectl("get", "networkpolicy", "-n", NS))
    print(kubectl("get", "pods", "-n", NS, "-L", f"quarantine.firebreak.dev/{INCIDENT}"))
    print(kubectl("get", "deployment", "storefront", "-n", NS))
    print(kubectl("get", "securityincident", INCIDENT, "-n", NS, "-o",
                  "jsonpath={range .status.actions[*]}{.step}{'\\t'}{.state}{'\\t'}"
                  "{.message}{'\\n'}{end}"))
    seconds = kubectl("get", "securityincident", INCIDENT, "-n", NS, "-o",
                      "jsonpath={.status.timeToContainSeconds}")
    print(f"time to contain: {seconds}s (from the incident's creation)")

    say("A person resolves it: kubectl patch ... spec.resolution")
    kubectl("patch", "securityincident", INCIDENT, "-n", NS, "--type=merge", "-p",
            json.dumps({"spec": {"resolution": {"reason": "miner removed, image rebuilt",
                                                "by": "demo"}}}))
    watch_phases(cluster, "Resolved", operator, log_path)

    say("Resolved. Everything reverted (the evidence is kept on purpose):")
    policies = kubectl("get", "networkpolicy", "-n", NS, "-o", "name")
    print(f"NetworkPolicies in {NS}: {policies.strip() or 'none'}")
    kubectl("rollout", "status", "deployment/storefront", "-n", NS, "--timeout=90s")
    print(kubectl("get", "pods", "-n", NS, "-L", f"quarantine.firebreak.dev/{INCIDENT}"))
    print(kubectl("get", "deployment", "storefront", "-n", NS))
    print(kubectl("get", "secrets", "-n", NS, "-l", "firebreak.dev/evidence=true"))
    print(kubectl("get", "events", "-n", NS, "--field-selector",
                  f"involvedObject.name={INCIDENT}", "--sort-by=.lastTimestamp"))
    return 0 if not policies.strip() else 1


if __name__ == "__main__":
    sys.exit(main())
