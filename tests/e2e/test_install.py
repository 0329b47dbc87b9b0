"""The install as users run it, on the real node: the operator's image, the manifests,
the token, and an alert through the operator's Service.

``make image`` builds the image (``image/``); it is imported into the real node's
containerd, as a user loads an image into nodes without a registry. Then the README's
install steps run as written (``INSTALL``; a test checks each is in the README), with
the overlay the README describes for a loaded image on selected nodes
(``tests/e2e/install/``). The operator then runs as pods under its ServiceAccount, its
RBAC and admission policies and the restricted Pod Security level, and reaches the API
server as pods do: through the ``kubernetes`` Service.

The real Alertmanager sends a firing alert, with the token from the Secret, to the
operator's Service; the incident is contained (requests from a pod on the real node
are blocked); the Deployment is rolled out while one incident is being resolved and a
second alert is on its way, and nothing is lost: the resolution is carried out, the
second alert becomes an incident and is contained, each exactly once; after
resolution every request is answered again.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from kubernetes import client

from image.build import Image, ImageError, ensure_image
from tests.alerting import AlertingStack
from tests.conftest import REPO
from tests.controlplane import LocalCluster, RealNode
from tests.controlplane.realnode import SERVICE_CIDR
from tests.helpers import (
    GROUP,
    VERSION,
    client_pod,
    create_playbook,
    fetch,
    start_pods,
    wait_for,
    web_pod,
)

pytestmark = [pytest.mark.cluster, pytest.mark.alerting]

OPERATOR_NS = "firebreak-system"
OVERLAY = REPO / "tests" / "e2e" / "install"
LOCAL_IMAGE = "localhost/firebreak:0.1.0"
SELECTOR = "app.kubernetes.io/name=firebreak"
ALERT = "InstalledOperatorTest"
# The README's install steps, as the test runs them; {manifests} is manifests/ in the
# README and this test's overlay here.
INSTALL = (
    "kubectl apply -k {manifests}",
    "kubectl -n firebreak-system create secret generic firebreak-webhook-token "
    '--from-literal=token="$(head -c 32 /dev/urandom | base64)"',
    "kubectl -n firebreak-system rollout status deployment/firebreak --timeout=300s",
)


def readme_install_block() -> str:
    """The README's block of install commands, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Installing into a cluster", 1)[1]
    (block,) = [b.split("```", 1)[0] for b in section.split("```sh")[1:] if "kubectl apply -k" in b]
    return re.sub(r"\\\n\s*", "", block)


def test_the_tests_install_steps_are_the_readmes() -> None:
    block = " ".join(readme_install_block().split())
    for step in INSTALL:
        assert " ".join(step.format(manifests="manifests/").split()) in block, step


@dataclass
class Installed:
    cluster: LocalCluster
    created: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def shell(self, command: str) -> str:
        """Run a README command with the cluster's kubectl first on the PATH."""
        kubectl = self.cluster.binaries["kubectl"]
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig),
               "PATH": f"{kubectl.parent}:{os.environ['PATH']}"}
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def pods(self, core: client.CoreV1Api) -> list[client.V1Pod]:
        return [p for p in core.list_namespaced_pod(OPERATOR_NS, label_selector=SELECTOR).items
                if p.metadata.deletion_timestamp is None]


def _exists(cluster: LocalCluster, doc: dict[str, Any]) -> bool:
    meta = doc["metadata"]
    args = ["get", f"{doc['kind']}.{doc['apiVersion'].split('/')[0]}"
            if "/" in doc["apiVersion"] else doc["kind"], meta["name"], "--ignore-not-found",
            "-o", "name"]
    if meta.get("namespace"):
        args += ["-n", meta["namespace"]]
    return bool(cluster.kubectl(*args).strip())


@pytest.fixture(scope="module")
def built_image() -> Image:
    """The image `make image` builds (from its cache when nothing changed)."""
    try:
        return ensure_image()
    except ImageError as exc:
        if os.environ.get("FIREBREAK_REQUIRE_REAL_NODE") == "1":
            pytest.fail(f"the operator's image cannot be built here: {exc}")
        pytest.skip(f"the operator's image cannot be built here: {exc}")


@pytest.fixture(scope="module")
def operator_image(built_image: Image, real_node: RealNode) -> str:
    """The image, imported into the real node's containerd under a local name, as a
    user loads an image into nodes without a registry; its image ID."""
    real_node.import_image(built_image.path, LOCAL_IMAGE)
    return built_image.id


@pytest.fixture(scope="module")
def installed(cluster: LocalCluster, real_node: RealNode, operator_image: str,
              api_client: client.ApiClient) -> Iterator[Installed]:
    """The README's install. Afterwards what it created is deleted (the operator first,
    so that no second operator runs beside later tests'), but for the namespace and the
    CRDs, which the session's other tests share."""
    core = client.CoreV1Api(api_client)
    docs = [d for d in yaml.safe_load_all(cluster.kubectl("kustomize", str(OVERLAY))) if d]
    install = Installed(cluster)
    install.created = [d for d in docs if d["kind"] not in ("Namespace", "CustomResourceDefinition")
                       and not _exists(cluster, d)]
    token_existed = bool(cluster.kubectl("get", "secret", "-n", OPERATOR_NS,
                                         "firebreak-webhook-token", "--ignore-not-found",
                                         "-o", "name").strip()) if _namespace(core) else False
    began = time.monotonic()
    try:
        for step in INSTALL:
            install.shell(step.format(manifests=OVERLAY.relative_to(REPO)))
        install.seconds = time.monotonic() - began
        yield install
    finally:
        workloads = [d for d in install.created if d["kind"] == "Deployment"]
        others = [d for d in install.created if d["kind"] != "Deployment"]
        for docs_ in (workloads, others):
            if docs_:
                cluster.kubectl("delete", "--ignore-not-found", "--wait=true", "-f", "-",
                                input=yaml.safe_dump_all(docs_), check=False)
        wait_for(lambda: not install.pods(core), timeout=120, what="the operator's pods to end")
        if not token_existed:
            cluster.kubectl("delete", "secret", "-n", OPERATOR_NS, "firebreak-webhook-token",
                            "--ignore-not-found", check=False)


def _namespace(core: client.CoreV1Api) -> bool:
    return any(n.metadata.name == OPERATOR_NS for n in core.list_namespace().items)


def _route_hex(cidr: str) -> str:
    """A destination as /proc/net/route writes it (the address's bytes, little-endian)."""
    return f"{int.from_bytes(ipaddress.ip_network(cidr).network_address.packed, 'little'):08X}"


def _exec_python(cluster: LocalCluster, pod: str, code: str) -> Any:
    return json.loads(cluster.kubectl("exec", "-n", OPERATOR_NS, pod, "--", "python3", "-c", code))


WHO_AND_HOW = """
import base64, json, os
token = open('/var/run/secrets/kubernetes.io/serviceaccount/token').read().split('.')[1]
routes = [line.split()[1:3] for line in open('/proc/net/route').read().splitlines()[1:]]
try:
    open('/opt/firebreak/probe', 'w')
    writable = True
except OSError:
    writable = False
print(json.dumps({
    'subject': json.loads(base64.urlsafe_b64decode(token + '==='))['sub'],
    'uid': os.getuid(),
    'api': os.environ['KUBERNETES_SERVICE_HOST'] + ':' + os.environ['KUBERNETES_SERVICE_PORT'],
    'destinations': sorted(d for d, _ in routes),
    'root_writable': writable,
    'resolv': open('/etc/resolv.conf').read(),
}))
"""


def test_the_operator_runs_as_installed(
    installed: Installed, cluster: LocalCluster, real_node: RealNode, core: client.CoreV1Api,
    apps: client.AppsV1Api, operator_image: str,
) -> None:
    print(f"install to ready: {installed.seconds:.1f}s")
    deployment = apps.read_namespaced_deployment("firebreak", OPERATOR_NS)
    pods = installed.pods(core)
    assert len(pods) == deployment.spec.replicas >= 1
    for pod in pods:
        assert pod.spec.node_name == real_node.name
        assert pod.spec.service_account_name == "firebreak"
        (status,) = pod.status.container_statuses
        assert status.ready and status.restart_count == 0
        assert status.image_id == operator_image, "the pod runs the image make image built"
        facts = _exec_python(cluster, pod.metadata.name, WHO_AND_HOW)
        assert facts["subject"] == "system:serviceaccount:firebreak-system:firebreak"
        assert facts["uid"] == 10001
        assert not facts["root_writable"]
        # The API server is the `kubernetes` Service, reached through kube-proxy: the pod
        # has no route but its bridge and the Service range, and asks no resolver.
        service = core.read_namespaced_service("kubernetes", "default")
        assert facts["api"] == f"{service.spec.cluster_ip}:443"
        assert facts["destinations"] == sorted(
            _route_hex(cidr) for cidr in (real_node.subnet, SERVICE_CIDR)), "no default route"
        servers = [line.split()[1] for line in facts["resolv"].splitlines()
                   if line.startswith("nameserver")]
        assert set(servers) <= {"127.0.0.1"}, "no resolver but the pod's own loopback"

    # The namespace enforces the restricted Pod Security level: the operator's pods
    # passed it, and a privileged pod is refused.
    namespace = core.read_namespace(OPERATOR_NS)
    assert namespace.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    refused = subprocess.run(
        [str(cluster.binaries["kubectl"]), f"--kubeconfig={cluster.kubeconfig}", "run", "-n",
         OPERATOR_NS, "privileged", "--image=localhost/firebreak/busybox:local",
         "--dry-run=server", "--overrides",
         json.dumps({"spec": {"containers": [{"name": "privileged",
                                              "image": "localhost/firebreak/busybox:local",
                                              "securityContext": {"privileged": True}}]}})],
        capture_output=True, text=True)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr

    # Its log is readable through the API server (the kubelet serves it).
    log = cluster.kubectl("logs", "-n", OPERATOR_NS, pods[0].metadata.name)
    assert "alert webhook listening on http://0.0.0.0:8080" in log


def _rule(alerts: dict[str, str], namespace: str, quiet: tuple[str, ...] = ()) -> str:
    """One rule per pod, firing; those in ``quiet`` keep their rule (so Prometheus
    keeps its state) with an expression that no longer fires: resolved explicitly."""
    rules = [{"alert": ALERT, "expr": "vector(1) < 0" if pod in quiet else "vector(1)",
              "labels": {"namespace": namespace, "pod": pod, "severity": "critical"},
              "annotations": {"summary": f"a shell in {pod}"}} for pod in [*alerts, *quiet]]
    return yaml.safe_dump({"groups": [{"name": "firebreak-install", "rules": rules}]})


def _incident(custom: client.CustomObjectsApi, namespace: str, pod: str) -> dict[str, Any] | None:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                 "securityincidents")["items"]
    return next((i for i in items if i["spec"]["target"].get("name") == pod), None)


def _phase(custom: client.CustomObjectsApi, namespace: str, pod: str, phase: str
           ) -> dict[str, Any]:
    return wait_for(lambda: (i := _incident(custom, namespace, pod)) is not None
                    and (i.get("status") or {}).get("phase") == phase and i,
                    timeout=120, what=f"the incident about {pod} to be {phase}")


def test_an_alert_through_the_service_is_contained_and_a_rollout_loses_nothing(
    installed: Installed, cluster: LocalCluster, core: client.CoreV1Api,
    apps: client.AppsV1Api, custom: client.CustomObjectsApi, namespace: str,
) -> None:
    create_playbook(custom, "isolate", {
        "match": {"alertNames": [ALERT]},
        "steps": [{"name": "isolate", "action": "isolateNetwork", "params": {"scope": "pod"}}],
    }, namespace=namespace)
    ips = start_pods(core, namespace, web_pod("web-a"), web_pod("web-b"), client_pod("client"))

    def open_(pod: str) -> bool:
        return fetch(cluster.kubectl, namespace, "client", ips[pod]) is not None

    assert open_("web-a") and open_("web-b")

    # Alertmanager as a user points it at the Service: its address and the token from
    # the Secret (no cluster DNS here, so the Service's IP rather than its name).
    service = core.read_namespaced_service("firebreak", OPERATOR_NS)
    url = f"http://{service.spec.cluster_ip}:8080/alertmanager"
    token = base64.b64decode(core.read_namespaced_secret(
        "firebreak-webhook-token", OPERATOR_NS).data["token"]).decode().strip()
    with AlertingStack.started(webhook_url=url, rules=_rule({"web-a": "a"}, namespace),
                               token=token) as stack:
        try:
            first = _phase(custom, namespace, "web-a", "Contained")
            wait_for(lambda: not open_("web-a"), timeout=30, what="web-a to be cut off")
            assert open_("web-b")
            old = {p.metadata.name for p in installed.pods(core)}
            assert first["metadata"]["name"] in "".join(
                cluster.kubectl("logs", "-n", OPERATOR_NS, pod) for pod in old)

            # The rollout, and meanwhile a person resolves the first incident (its
            # alert stops: whatever Prometheus sends about web-a from now on is a repeat
            # or a resolution, never a new firing) and a second alert fires: both must
            # survive the operator's pods being replaced.
            began = time.monotonic()
            installed.shell("kubectl -n firebreak-system rollout restart deployment/firebreak")
            wait_for(lambda: not old <= {p.metadata.name for p in installed.pods(core)},
                     timeout=120, what="the rollout to replace a pod")
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "securityincidents", first["metadata"]["name"],
                {"spec": {"resolution": {"reason": "the shell was ours", "by": "admin"}}})
            stack.prometheus.set_rules(_rule({"web-b": "b"}, namespace, quiet=("web-a",)))
            installed.shell("kubectl -n firebreak-system rollout status deployment/firebreak "
                            "--timeout=300s")
            print(f"rollout: {time.monotonic() - began:.1f}s")
            new = {p.metadata.name for p in installed.pods(core)}
            assert not new & old

            resolved = _phase(custom, namespace, "web-a", "Resolved")
            second = _phase(custom, namespace, "web-b", "Contained")
        except AssertionError:
            print(stack.log_tails())
            raise
    try:
        wait_for(lambda: open_("web-a"), timeout=60, what="web-a to be answered again")
        wait_for(lambda: not open_("web-b"), timeout=60, what="web-b to be cut off")
    except AssertionError:  # what stood between the client and web-a
        print(cluster.kubectl("get", "securityincidents,networkpolicies,pods", "-n", namespace,
                              "-o", "wide", "--show-labels"))
        print(cluster.kubectl("get", "securityincidents", "-n", namespace, "-o",
                              "custom-columns=NAME:.metadata.name,TIMES:.status.signalTimes,"
                              "FIRST:.status.firstSeen,LAST:.status.lastSeen"))
        raise
    for incident in (resolved, second):
        assert incident["spec"]["source"] == "alertmanager"
        status = incident["status"]
        assert status["signalCount"] == 1, status
        assert [(a["step"], a["state"]) for a in status["actions"]] == [
            ("isolate", "Reverted" if incident is resolved else "Applied")], status["actions"]
    assert len(_incidents(custom, namespace)) == 2

    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "securityincidents", second["metadata"]["name"],
        {"spec": {"resolution": {"reason": "contained and cleaned", "by": "admin"}}})
    _phase(custom, namespace, "web-b", "Resolved")
    # The new pods' logs tell the end of the second incident's story (its start may
    # have been told by a pod the rollout replaced: the old replica acts until it goes).
    logs = "".join(cluster.kubectl("logs", "-n", OPERATOR_NS, pod) for pod in new)
    assert f"{second['metadata']['name']}: Reverted" in logs
    wait_for(lambda: open_("web-b"), timeout=30, what="web-b to be answered again")
    # Deleted while the operator runs, so that its finalizers are answered.
    for incident in (resolved, second):
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents",
                                               incident["metadata"]["name"])
    wait_for(lambda: not _incidents(custom, namespace), timeout=60,
             what="the incidents to be deleted")


def _incidents(custom: client.CustomObjectsApi, namespace: str) -> list[dict[str, Any]]:
    return custom.list_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, "securityincidents")["items"]


def test_the_image_holds_the_runtime_set_only(built_image: Image) -> None:
    names = set()
    with tarfile.open(built_image.path) as archive:
        manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=archive.extractfile(layer)) as files:  # type: ignore[arg-type]
                names.update(files.getnames())
    installed = {m.group(1).lower().replace("_", "-") for n in names
                 if (m := re.match(r"opt/firebreak/lib/python3\.11/site-packages/([^/]+)-[^-/]+"
                                   r"\.dist-info$", n))}
    locked = {line.split("==")[0] for line in
              (REPO / "requirements-runtime.lock").read_text().splitlines()
              if re.match(r"^[a-z0-9]", line)}
    assert installed == locked | {"firebreak"}
    for tool in ("pytest", "mypy", "ruff", "hypothesis", "pip", "setuptools"):
        assert not any(f"site-packages/{tool}/" in n for n in names), tool
