"""A real Kubernetes control plane on loopback, for tests and local development.

It runs etcd, kube-apiserver (RBAC, TLS, client certificates, service-account
tokens), kube-controller-manager, kube-scheduler and kwok, which plays the kubelet
for a few fake nodes so that Deployments get Running pods at any scale; and, where
the host allows it, one real node (``realnode.py``) whose pods run and send packets.
Nothing here imitates the API: every request in the tests is served by the upstream
kube-apiserver.

Two ways to hold it:
- ``with LocalCluster.started(...) as cluster:`` (pytest): every process is tied
  to this Python process (PR_SET_PDEATHSIG), so even a SIGKILLed test run leaves
  nothing behind, and the work folder is removed on the way out;
- ``python -m tests.controlplane up`` / ``down`` (``make cluster``): processes are
  detached, their pids are written to ``state.json`` next to the kubeconfig.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from .binaries import Binaries, ensure_binaries
from .pki import Authority, write_control_plane_pki
from .realnode import SERVICE_CIDR, RealNode, clean_host, drain, sweep, unavailable_reason

POD_CIDR = "10.244.0.0/16"
KWOK_NODE_LABEL = "firebreak.dev/fake-node"
# The identity the operator runs under in the tests (manifests/rbac.yaml).
OPERATOR_USER = "system:serviceaccount:firebreak-system:firebreak"
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "daemonset-controller",
    "job-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "endpointslice-controller",
    # Lifts the not-ready taint that admission puts on every new node once kwok
    # reports it Ready (and would taint a node whose heartbeats stop).
    "node-lifecycle-controller",
)
STOP_GRACE_SECONDS = 10.0
WORKDIR_PREFIX = "firebreak-cluster-"
OWNER_FILE = "owner.pid"
PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    pass


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL it when the
    # process that started it goes away, however that process ends.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_ports(count: int) -> list[int]:
    # Hold every socket until all are chosen so the kernel cannot hand out one twice.
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --- the cluster ---------------------------------------------------------------


@dataclass
class LocalCluster:
    """A running (or startable) control plane rooted at ``workdir``."""

    workdir: Path
    binaries: Binaries
    nodes: int = 3
    detach: bool = False
    want_real_node: bool = True
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    real_node: RealNode | None = None
    # Why no real node runs: the host cannot run one (skip), or it failed to start (error).
    real_node_unavailable: str | None = None
    real_node_failure: str | None = None
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @classmethod
    @contextlib.contextmanager
    def started(cls, nodes: int = 3, workdir: Path | None = None, real_node: bool = True
                ) -> Iterator[LocalCluster]:
        """Start a cluster tied to this process; stop it and remove its files on exit."""
        owned = workdir is None
        if owned:
            # A killed run's real node first: its journal lives in the folder below.
            sweep()
            _remove_abandoned_workdirs()
        root = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX)) if owned else workdir
        assert root is not None
        (root / OWNER_FILE).write_text(str(os.getpid()))
        cluster = cls(root, ensure_binaries(), nodes=nodes, want_real_node=real_node)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop(remove=owned)

    # -- starting

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        write_control_plane_pki(self.pki, str(next(ipaddress.ip_network(SERVICE_CIDR).hosts())))
        etcd_client, etcd_peer, apiserver, kwok_port = _free_ports(4)
        self.server = f"https://127.0.0.1:{apiserver}"
        self._write_kubeconfig()
        try:
            self._start_etcd(etcd_client, etcd_peer)
            self._start_apiserver(apiserver, etcd_client)
            self._wait_ready()
            self._start_controllers()
            self._start_kwok(kwok_port)
            self._create_nodes()
            if self.want_real_node:
                self._start_real_node()
            self._write_state()
        except BaseException:
            self.stop(remove=False)
            raise

    def _start_real_node(self) -> None:
        sweep()  # a node left behind by a killed run
        self.real_node_unavailable = unavailable_reason()
        if self.real_node_unavailable:
            print(f"No real node: {self.real_node_unavailable}", file=sys.stderr)
            return
        node = RealNode(self.workdir / "realnode", self.binaries, Authority(self.pki),
                        self.server, self._spawn, self.kubectl)
        self.real_node = node
        # Attached, the node lives as long as this process; detached, as long as the
        # API server it belongs to.
        owner = self.processes["kube-apiserver"].pid if self.detach else os.getpid()
        try:
            node.start(owner)
        except Exception as exc:  # the cluster still serves every kwok test
            self.real_node_failure = f"the real node failed to start: {exc}"
            print(self.real_node_failure, file=sys.stderr)
            self._stop_real_node()

    def _stop_real_node(self) -> None:
        node = self.real_node
        if node is None:
            return
        node.drain()
        for name in ("kube-proxy", "apiserver-relay", "kube-router", "kubelet", "containerd"):
            proc = self.processes.pop(name, None)
            if proc is not None:
                _terminate(proc.pid, proc)
        clean_host(node.state)
        self.real_node = None

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        self._logs.append(log)
        proc = self.processes[name] = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            # Own process group: a Ctrl-C in the terminal reaches only us, and we stop
            # the children in order.
            start_new_session=True,
            preexec_fn=None if self.detach else _die_with_parent,
        )
        return proc

    def _start_etcd(self, client: int, peer: int) -> None:
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        self._spawn("etcd", [
            str(self.binaries["etcd"]),
            "--name=firebreak",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=firebreak={peer_url}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ])

    def _start_apiserver(self, port: int, etcd_client: int) -> None:
        pki = self.pki
        self._spawn("kube-apiserver", [
            str(self.binaries["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The default reconciler would publish 127.0.0.1 as the `kubernetes`
            # Service endpoint, which no pod can reach; the real node publishes its
            # bridge address instead (realnode.py), where pods do reach the API server.
            "--endpoint-reconciler-type=none",
            f"--secure-port={port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Node: a kubelet (system:node:<name>) may touch only its own node and pods.
            "--authorization-mode=Node,RBAC",
            # The API server reaches a kubelet by IP, never by a name that a resolver
            # would have to look up, and proves who it is with a client certificate;
            # the kubelet's serving certificate is checked against the cluster's CA.
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--allow-privileged=true",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--profiling=false",
            # Every write the operator's ServiceAccount makes, with its outcome: what
            # the tests count when they say a step was applied once.
            f"--audit-policy-file={self._audit_policy()}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxsize=0",
        ])

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def _audit_policy(self) -> Path:
        path = self.workdir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [
                {"level": "Metadata", "users": [OPERATOR_USER],
                 "verbs": ["create", "update", "patch", "delete"]},
                {"level": "None"},
            ]}))
        return path

    def audit(self) -> list[dict[str, Any]]:
        """The audit events so far: the operator's writes, one per request."""
        if not self.audit_log.exists():
            return []
        with self.audit_log.open() as lines:
            return [json.loads(line) for line in lines if line.strip()]

    def _start_controllers(self) -> None:
        pki = self.pki
        self._spawn("kube-controller-manager", [
            str(self.binaries["kube-controller-manager"]),
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            f"--controllers={','.join(CONTROLLERS)}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--concurrent-deployment-syncs=10",
            "--concurrent-replicaset-syncs=10",
            "--concurrent-namespace-syncs=10",
            "--concurrent-gc-syncs=20",
        ])
        scheduler_config = self.workdir / "scheduler.yaml"
        scheduler_config.write_text(yaml.safe_dump({
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "leaderElection": {"leaderElect": False},
            "clientConnection": {"kubeconfig": str(self.kubeconfig), "qps": 200, "burst": 400},
        }))
        self._spawn("kube-scheduler", [
            str(self.binaries["kube-scheduler"]),
            f"--config={scheduler_config}",
            "--secure-port=0",
        ])

    def _start_kwok(self, port: int) -> None:
        self._spawn("kwok", [
            str(self.binaries["kwok"]),
            f"--kubeconfig={self.kubeconfig}",
            f"--config={self.binaries.kwok_stages}",
            f"--manage-nodes-with-label-selector={KWOK_NODE_LABEL}",
            f"--cidr={POD_CIDR}",
            # Anything that tries to reach a fake node's kubelet (logs, exec) stays on
            # loopback and is refused at once.
            "--node-ip=127.0.0.1",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{port}",
        ])

    def _write_kubeconfig(self) -> None:
        import base64

        def b64(name: str) -> str:
            return base64.b64encode((self.pki / name).read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "firebreak-local", "cluster": {
                "server": self.server, "certificate-authority-data": b64("ca.crt")}}],
            "users": [{"name": "admin", "user": {
                "client-certificate-data": b64("admin.crt"),
                "client-key-data": b64("admin.key")}}],
            "contexts": [{"name": "firebreak-local", "context": {
                "cluster": "firebreak-local", "user": "admin"}}],
            "current-context": "firebreak-local",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait_ready(self, timeout: float = 120.0) -> None:
        ctx = self.ssl_context()
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.2)
        raise ControlPlaneError(
            f"kube-apiserver not ready after {timeout:.0f}s ({last_error}):\n"
            f"{self.log_tail('kube-apiserver')}"
        )

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """Run the cluster's own kubectl against it and return its standard output."""
        result = subprocess.run(
            [str(self.binaries["kubectl"]), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=120,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def wait_established(self, *crds: str, timeout: float = 60.0) -> None:
        """Wait until the CustomResourceDefinitions are served. (``kubectl wait`` fails
        outright on a CRD whose status has no conditions yet, which happens under load.)"""
        deadline = time.monotonic() + timeout
        pending = list(crds)
        while pending:
            out = self.kubectl("get", "crd", *pending, "--ignore-not-found", "-o", "json")
            found = json.loads(out) if out.strip() else {}
            items = found.get("items", [found] if found else [])  # one name: the object
            established = {
                item["metadata"]["name"] for item in items
                if any(c["type"] == "Established" and c["status"] == "True"
                       for c in (item.get("status") or {}).get("conditions") or [])}
            pending = [crd for crd in pending if crd not in established]
            if pending and time.monotonic() > deadline:
                raise ControlPlaneError(f"CRDs not established after {timeout:.0f}s: {pending}")
            if pending:
                time.sleep(0.2)

    def _create_nodes(self, timeout: float = 60.0) -> None:
        if self.nodes:
            self.add_nodes(self.nodes)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            out = self.kubectl("get", "nodes", "-l", KWOK_NODE_LABEL, "-o", "json")
            items = json.loads(out)["items"]
            ready = [
                n for n in items
                if any(c["type"] == "Ready" and c["status"] == "True"
                       for c in n.get("status", {}).get("conditions", []))
            ]
            sa = self.kubectl("get", "serviceaccount", "default", "-n", "default",
                              "--ignore-not-found", "-o", "name")
            if len(ready) >= self.nodes and sa.strip():
                return
            time.sleep(0.3)
        raise ControlPlaneError(f"nodes or the default ServiceAccount not ready after {timeout}s")

    def add_nodes(self, count: int, prefix: str = "kwok-node", start: int = 0) -> list[str]:
        """Register ``count`` fake nodes that kwok will run pods on."""
        names = [f"{prefix}-{i}" for i in range(start, start + count)]
        docs = [_node_manifest(name) for name in names]
        for i in range(0, len(docs), 200):
            self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs[i:i + 200]))
        return names

    def _write_state(self) -> None:
        state = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "kubectl": str(self.binaries["kubectl"]),
            "real_node": str(self.real_node.state) if self.real_node else None,
            "pids": {name: p.pid for name, p in self.processes.items()},
        }
        (self.workdir / "state.json").write_text(json.dumps(state, indent=2))

    # -- stopping

    def stop(self, remove: bool = True) -> None:
        """Stop every process (newest first), then remove the work folder."""
        with contextlib.suppress(Exception):  # the API server may be gone already
            self._stop_real_node()
        for name in reversed(list(self.processes)):
            _terminate(self.processes[name].pid, self.processes[name])
        self.processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not _alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if proc is not None:
        proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has ended all the same.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            return False
    return True


def _remove_abandoned_workdirs() -> None:
    """A run that was SIGKILLed took its processes with it (PR_SET_PDEATHSIG) but could
    not remove its folder; the next run does, once the owner is gone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            shutil.rmtree(folder, ignore_errors=True)


def _node_manifest(name: str) -> dict[str, object]:
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                KWOK_NODE_LABEL: "true",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
        },
        "spec": {},
        "status": {"allocatable": capacity, "capacity": capacity},
    }


def stop_detached(workdir: Path) -> bool:
    """Stop a cluster started with ``up``; return False when none was running."""
    state_file = workdir / "state.json"
    if not state_file.exists():
        return False
    state = json.loads(state_file.read_text())
    real_node = state.get("real_node")
    if real_node:
        def kubectl(*args: str, check: bool = True) -> str:
            return subprocess.run([state["kubectl"], f"--kubeconfig={state['kubeconfig']}", *args],
                                  capture_output=True, text=True, timeout=120, check=check).stdout

        drain(kubectl)
    for pid in reversed(list(state["pids"].values())):
        _terminate(pid)
    if real_node:
        clean_host(Path(real_node))
    shutil.rmtree(workdir, ignore_errors=True)
    return True
