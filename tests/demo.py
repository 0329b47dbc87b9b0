"""`make demo`: Firebreak's main job, start to end, on the local cluster.

Starts the cluster, installs the CRDs and the ready playbooks, deploys a small shop
and a shopper pod on the real node, runs the operator, and tells the incident the
way a responder sees it: the shopper's request to the storefront pod works (an
allow-all policy stands in the namespace, as in real clusters), an alert arrives,
the incident moves through its phases, the same request now fails; the
incident is resolved, everything is reverted, and the request works again. Every
request is real packets between pods, and the output says so. On a host that
cannot run the real node, the shop runs on kwok's fake nodes and the output says
that no packet could be sent. It stops everything it started.
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

from kubernetes import client

from tests.controlplane import LocalCluster
from tests.controlplane.cluster import _free_ports
from tests.helpers import HTTP_PORT, REAL_NODE_LABEL, TOOLS_IMAGE, client_pod, fetch

REPO = Path(__file__).resolve().parent.parent
NS = "shop"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def main() -> int:
    began = time.monotonic()
    say("Starting a local Kubernetes cluster (etcd, kube-apiserver, controllers, kwok nodes, "
        "one real node)")
    with LocalCluster.started(nodes=3) as cluster:
        kubectl = cluster.kubectl
        print(f"ready in {time.monotonic() - began:.1f}s")
        print(kubectl("get", "nodes", "-L", REAL_NODE_LABEL))
        real = cluster.real_node is not None
        if not real:
            print(f"No real node ({cluster.real_node_failure or cluster.real_node_unavailable}): "
                  "the shop runs on fake nodes, and no request can be sent.")

        say("Installing Firebreak: CRDs, namespace, RBAC, and the playbooks in playbooks/")
        kubectl("apply", "-k", str(REPO / "crds"))
        cluster.wait_established("securityincidents.firebreak.dev", "responseplaybooks.firebreak.dev")
        kubectl("apply", "-f", str(REPO / "manifests" / "namespace.yaml"),
                "-f", str(REPO / "manifests" / "rbac.yaml"))
        kubectl("apply", "-f", str(REPO / "playbooks"))
        print(kubectl("get", "responseplaybooks", "-n", "firebreak-system"))

        say("Deploying the shop: a storefront with 3 replicas" + (
            ", and a shopper pod, on the real node" if real else ""))
        kubectl("create", "namespace", NS)
        kubectl("apply", "-f", "-", input=json.dumps(storefront(real)))
        if real:
            shopper = client_pod("shopper")
            shopper.api_version, shopper.kind = "v1", "Pod"
            kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(
                client.ApiClient().sanitize_for_serialization(shopper)))
            kubectl("wait", "-n", NS, "--for=condition=Ready", "pod/shopper", "--timeout=90s")
        # What real namespaces carry: a policy that lets anyone reach the storefront.
        # A quarantine that is only one more deny policy would be opened by it.
        kubectl("apply", "-n", NS, "-f", "-", input=json.dumps({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "storefront-open"},
            "spec": {"podSelector": {"matchLabels": {"app": "storefront"}},
                     "policyTypes": ["Ingress"], "ingress": [{}]}}))
        kubectl("rollout", "status", "deployment/storefront", "-n", NS, "--timeout=90s")
        pods = json.loads(kubectl("get", "pods", "-n", NS, "-l", "app=storefront",
                                  "-o", "json"))["items"]
        victim = sorted(pods, key=lambda p: p["metadata"]["name"])[0]
        print(kubectl("get", "pods", "-n", NS, "-o", "wide"))
        shop = Shopper(cluster, victim["metadata"]["name"], victim["status"].get("podIP"), real)
        shop.visit("before any alert")

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
                     f"--webhook-address=127.0.0.1:{port}", f"--webhook-token-file={token_file}",
                     "--metrics-address=127.0.0.1:0"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                wait_ready(webhook, operator, log_path)
                return run_incident(cluster, shop, operator, log_path, webhook,
                                    token_file.read_text())
            finally:
                operator.terminate()
                operator.wait(timeout=20)
                say("Stopping the operator and the control plane")


def storefront(real: bool) -> dict[str, object]:
    """Three replicas of a web server: busybox httpd on the real node, or (without
    one) a plain nginx Deployment that kwok pretends to run."""
    pod: dict[str, object] = {"containers": [{"name": "web", "image": "nginx:1.27"}]}
    if real:
        pod = {
            "nodeSelector": {REAL_NODE_LABEL: "true"},
            "tolerations": [{"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "web", "image": TOOLS_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c",
                            "mkdir -p /www && echo \"storefront $HOSTNAME\" > /www/index.html && "
                            f"exec httpd -f -v -p {HTTP_PORT} -h /www"],
            }],
        }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "storefront", "namespace": NS, "labels": {"app": "storefront"}},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "storefront"}},
                 "template": {"metadata": {"labels": {"app": "storefront"}}, "spec": pod}},
    }


class Shopper:
    """The shopper pod's request to the storefront pod the alert is about."""

    def __init__(self, cluster: LocalCluster, pod: str, ip: str | None, real: bool) -> None:
        self.cluster, self.pod, self.ip, self.real = cluster, pod, ip, real

    def visit(self, when: str) -> bool | None:
        if not self.real or not self.ip:
            print(f"[no packets: fake node] {when}: shopper -> {self.pod} cannot be tried")
            return None
        began = time.monotonic()
        page = fetch(self.cluster.kubectl, NS, "shopper", self.ip)
        took = time.monotonic() - began
        target = f"shopper -> {self.pod} ({self.ip}:{HTTP_PORT})"
        if page is None:
            print(f"[real packets] {when}: {target}: BLOCKED (refused or timed out, {took:.1f}s)")
        else:
            print(f"[real packets] {when}: {target}: answered {page.strip()!r} ({took:.1f}s)")
        return page is not None


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


def run_incident(cluster: LocalCluster, shop: Shopper, operator: subprocess.Popen[bytes],
                 log_path: Path, webhook: str, token: str) -> int:
    kubectl = cluster.kubectl
    victim = shop.pod
    say(f"An alert: a terminal shell in pod {victim}. Alertmanager posts it to the webhook")
    alert = {
        "version": "4", "status": "firing", "receiver": "firebreak", "groupLabels": {},
        "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "TerminalShellInContainer", "severity": "critical",
                       "namespace": NS, "pod": victim},
            "annotations": {"summary": f"A shell was spawned in a container of {victim}"},
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

    say("Contained. The isolating NetworkPolicy, the allow-all policy (which no longer "
        "selects the pod), and the quarantined pod:")
    print(kubectl("get", "networkpolicy", "-n", NS))
    # The playbook detaches the pod (its app label changes), which takes it out of
    # storefront-open by itself; without that, the policy would get the exclusion term.
    print("storefront-open selects: " + kubectl(
        "get", "networkpolicy", "storefront-open", "-n", NS, "-o", "jsonpath={.spec.podSelector}")
        + "; the quarantined pod's labels: " + kubectl(
        "get", "pod", victim, "-n", NS, "-o", "jsonpath={.metadata.labels}"))
    print("Isolated: " + kubectl(
        "get", "securityincident", incident, "-n", NS, "-o",
        "jsonpath={.status.conditions[?(@.type=='Isolated')].message}") + "\n")
    print(kubectl("get", "pods", "-n", NS, "-L", f"quarantine.firebreak.dev/{incident}"))
    print(kubectl("get", "deployment", "storefront", "-n", NS))
    print(kubectl("get", "securityincident", incident, "-n", NS, "-o",
                  "jsonpath={range .status.actions[*]}{.step}{'\\t'}{.state}{'\\t'}"
                  "{.message}{'\\n'}{end}"))
    seconds = kubectl("get", "securityincident", incident, "-n", NS, "-o",
                      "jsonpath={.status.timeToContainSeconds}")
    print(f"time to contain: {seconds}s (from the alert's arrival)")
    blocked = shop.visit("after containment") is False

    say("A person resolves it: kubectl patch ... spec.resolution")
    kubectl("patch", "securityincident", incident, "-n", NS, "--type=merge", "-p",
            json.dumps({"spec": {"resolution": {"reason": "an engineer debugging, confirmed",
                                                "by": "demo"}}}))
    watch_phases(cluster, "Resolved", operator, log_path)

    say("Resolved. Everything reverted (the evidence is kept on purpose):")
    policies = kubectl("get", "networkpolicy", "-n", NS, "-o", "name")
    print(f"NetworkPolicies in {NS}: {policies.strip() or 'none'}")
    open_selector = kubectl("get", "networkpolicy", "storefront-open", "-n", NS, "-o",
                            "jsonpath={.spec.podSelector}")
    print(f"storefront-open selects, as before: {open_selector}")
    kubectl("rollout", "status", "deployment/storefront", "-n", NS, "--timeout=90s")
    print(kubectl("get", "pods", "-n", NS, "-L", f"quarantine.firebreak.dev/{incident}"))
    print(kubectl("get", "deployment", "storefront", "-n", NS))
    print(kubectl("get", "secrets", "-n", NS, "-l", "firebreak.dev/evidence=true"))
    print(kubectl("get", "events", "-n", NS, "--field-selector",
                  f"involvedObject.name={incident}", "--sort-by=.lastTimestamp"))
    reopened = shop.visit("after resolution") if released(cluster, victim) else None
    if reopened is None and shop.real:
        print(f"(the ReplicaSet removed {victim} as one too many once it was released)")
    ok = (policies.split() == ["networkpolicy.networking.k8s.io/storefront-open"]
          and "matchExpressions" not in open_selector
          and (not shop.real or (blocked and reopened is not False)))
    return 0 if ok else 1


def released(cluster: LocalCluster, pod: str) -> bool:
    """Whether the released pod still runs (its ReplicaSet may remove it as surplus)."""
    out = cluster.kubectl("get", "pod", pod, "-n", NS, "--ignore-not-found", "-o",
                          "jsonpath={.metadata.deletionTimestamp}|{.status.phase}")
    return out == "|Running"


if __name__ == "__main__":
    sys.exit(main())
