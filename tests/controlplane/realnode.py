"""One real Kubernetes node beside the local control plane: pods that run, packets
that are filtered.

kwok's nodes run no process and send no packet, so a NetworkPolicy could only be
checked as an object. This node is real: Debian's containerd and runc, a kubelet
built from the pinned Kubernetes module, the bridge and host-local CNI plugins on a
bridge made here, and kube-router's firewall controller (iptables and ipset, the
policy enforcer k3s embeds) run with the firewall alone. Pods are processes in
network namespaces of their own; ``kubectl logs`` and ``kubectl exec`` work. kube-proxy
(built from the same module, iptables mode) makes Services work on the node, and the
API server is published at the bridge address as the ``kubernetes`` Service's endpoint
(``relay.py``), so a pod reaches it as pods do: the operator's own pods run here.

Keeping to this machine:
- the node's pods live on ``SUBNET``, outside kwok's pod range, on a bridge with no
  route anywhere else (no default route, no masquerade, forwarding left as found);
  their one other route is the Service range, through the bridge to this host, which
  routes that range back onto the bridge: a Service address that kube-proxy does not
  translate goes nowhere;
- the node is tainted, so only pods that ask for it (test pods with local images
  and ``imagePullPolicy: Never``) land on it; its images are written by
  ``images.py`` and imported, nothing is ever pulled;
- the API server dials the kubelet by IP and authenticates with a client
  certificate; the kubelet refuses anonymous callers and is itself a node identity
  (``system:node:<name>``) under the Node authorizer.

Everything this changes on the host is written to a journal in the node's state
folder *before* the next change, and undone from that journal alone: by ``stop``,
and by ``sweep`` at the next start when a run was killed before it could clean up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .binaries import Binaries, module_dir
from .images import PAUSE_IMAGE, write_pause_image, write_tools_image
from .pki import Authority

NODE_NAME = "realnode-0"
REAL_NODE_LABEL = "firebreak.dev/real-node"
SUBNET_PREFIX = "10.245.0"  # a /24; kwok's fake pods use 10.244.0.0/16
BRIDGE = "fbr0"
KUBELET_PORT = 10250
SERVICE_CIDR = "10.96.0.0/16"  # the API server's --service-cluster-ip-range
RELAY = Path(__file__).resolve().parent / "relay.py"
CGROUP_PREFIX = "firebreak-"
REQUIRED_COMMANDS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "ip", "iptables",
                     "iptables-save", "ip6tables", "ip6tables-save", "ipset", "nft", "gcc")
BUSYBOX = Path("/bin/busybox")
CNI_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"), Path("/usr/libexec/cni"))
CNI_PLUGINS = ("bridge", "host-local", "loopback")
# Host paths containerd and CNI use whatever their configuration says.
FIXED_PATHS = (Path("/run/containerd"), Path("/run/netns"), Path("/var/lib/cni"))
# Kernel settings the kubelet (panic and overcommit, which it sets to its liking) and the
# bridge filtering below change, and those kube-proxy would change if it were not told to
# leave them (conntrack, route_localnet): put back as they were on stop.
SYSCTLS = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory", "vm/panic_on_oom",
           "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
           "net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet",
           "net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_tcp_timeout_established",
           "net/netfilter/nf_conntrack_tcp_timeout_close_wait")
PACKAGES_HINT = "`make nodepackages` installs them"
Kubectl = Callable[..., str]


class RealNodeError(RuntimeError):
    pass


def _run(*argv: str, check: bool = True, input: str | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=60)
    if check and result.returncode != 0:
        raise RealNodeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def _cni_dir() -> Path | None:
    for folder in CNI_DIRS:
        if all((folder / plugin).is_file() for plugin in CNI_PLUGINS):
            return folder
    return None


def _cgroup_mounts() -> list[tuple[Path, str]]:
    """Every cgroup hierarchy: (mount point, "cgroup" or "cgroup2")."""
    mounts = []
    for line in Path("/proc/mounts").read_text().splitlines():
        _, target, kind, *_ = line.split()
        if kind in ("cgroup", "cgroup2"):
            mounts.append((Path(target), kind))
    return mounts


def live_node_folders() -> list[Path]:
    """State folders of real nodes whose owner still runs (one node per host: two
    enforcers would fight over the same iptables chains)."""
    return [folder for folder in _node_folders() if _owner_alive(folder)]


def _node_folders() -> Iterator[Path]:
    registry = _registry()
    if registry.is_dir():
        for link in registry.iterdir():
            yield Path(link.read_text().strip())


def _registry() -> Path:
    # Where every node writes its state folder's path while it exists, so that the next
    # start finds a node left behind by a killed run, wherever its folder was.
    base = os.environ.get("XDG_RUNTIME_DIR") or "/run"
    return Path(base) / "firebreak-realnode"


def _registry_entry(state: Path) -> Path:
    return _registry() / hashlib.sha256(str(state).encode()).hexdigest()[:16]


def _owner_alive(folder: Path) -> bool:
    try:
        owner = int((folder / "owner.pid").read_text())
    except (OSError, ValueError):
        return False
    return _pid_alive(owner)


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(") ", 1)[-1].startswith("Z")


def unavailable_reason() -> str | None:
    """Why a real node cannot run here, or None when it can."""
    if os.environ.get("FIREBREAK_REAL_NODE", "1") == "0":
        return "turned off with FIREBREAK_REAL_NODE=0"
    if not sys.platform.startswith("linux"):
        return f"a real node needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "a real node needs root (bridges, network namespaces, iptables, cgroups)"
    missing = [c for c in REQUIRED_COMMANDS if shutil.which(c) is None]
    if not BUSYBOX.is_file():
        missing.append(str(BUSYBOX))
    if missing:
        return f"missing {', '.join(missing)} ({PACKAGES_HINT})"
    if _cni_dir() is None:
        return f"CNI plugins {', '.join(CNI_PLUGINS)} not found ({PACKAGES_HINT})"
    if not _cgroup_mounts():
        return "no cgroup file system is mounted"
    if not Path("/proc/sys/net/bridge").is_dir():
        return "the kernel has no bridge netfilter (br_netfilter): policies would not apply"
    live = live_node_folders()
    if live:
        return f"another real node runs on this host (state in {live[0]}); one at a time"
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        return f"network interface {BRIDGE} already exists"
    return None


# --- the journal of host changes -----------------------------------------------------


@dataclass
class Journal:
    """What was changed on the host, appended (and flushed) before the change is made."""

    path: Path

    def entries(self) -> list[list[str]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def add(self, *entry: str) -> None:
        with self.path.open("a") as journal:
            journal.write(json.dumps(list(entry)) + "\n")
            journal.flush()
            os.fsync(journal.fileno())


# --- the node ----------------------------------------------------------------------


@dataclass
class RealNode:
    """A real node rooted at ``state``; processes are started through ``spawn`` (the
    cluster's, so they stop with it) and the API is reached with ``kubectl``."""

    state: Path
    binaries: Binaries
    authority: Authority
    server: str
    spawn: Callable[[str, list[str]], subprocess.Popen[bytes]]
    kubectl: Kubectl
    name: str = NODE_NAME
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ip(self) -> str:
        return f"{SUBNET_PREFIX}.1"

    @property
    def subnet(self) -> str:
        return f"{SUBNET_PREFIX}.0/24"

    @property
    def bridge(self) -> str:
        return BRIDGE

    @property
    def socket(self) -> Path:
        return self.state / "containerd.sock"

    @property
    def journal(self) -> Journal:
        return Journal(self.state / "journal")

    @property
    def cgroup(self) -> str:
        return f"{CGROUP_PREFIX}{self.name}"

    # -- starting

    def start(self, owner: int) -> None:
        began = time.monotonic()
        self.state.mkdir(parents=True)
        (self.state / "owner.pid").write_text(str(owner))
        _registry().mkdir(parents=True, exist_ok=True)
        _registry_entry(self.state).write_text(str(self.state))
        self._remember_host()
        self._make_bridge()
        self._make_cgroups()
        self.kubectl("apply", "-f", "-", input=LOCAL_IMAGES_ONLY)
        images = self._write_images()
        self._start_containerd(images)
        self.timings["containerd_ready_seconds"] = time.monotonic() - began
        self._start_kubelet()
        self._wait_ready()
        self.timings["node_ready_seconds"] = time.monotonic() - began
        self._start_enforcer()
        self._publish_api_server()
        self._start_proxy()
        self.timings["up_seconds"] = time.monotonic() - began

    def _remember_host(self) -> None:
        (self.state / "nft-tables.before").write_text(_run("nft", "list", "tables"))
        (self.state / "ipsets.before").write_text(_run("ipset", "list", "-n"))
        netns = Path("/run/netns")
        (self.state / "netns.before").write_text(
            "\n".join(sorted(p.name for p in netns.iterdir())) if netns.is_dir() else "")
        sysctls = {name: Path("/proc/sys", name).read_text().strip()
                   for name in SYSCTLS if Path("/proc/sys", name).exists()}
        (self.state / "sysctls.before").write_text(json.dumps(sysctls))
        for path in FIXED_PATHS:
            if not path.exists():
                self.journal.add("path", str(path))
        for name in ("net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"):
            # Bridged packets between pods of this node must pass iptables to be filtered.
            Path("/proc/sys", name).write_text("1")

    def _make_bridge(self) -> None:
        # The bridge's address is the pods' gateway and the node's IP: the kubelet will
        # not take a loopback address, and the API server reaches it here.
        self.journal.add("link", BRIDGE)
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{self.ip}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # Service addresses (from this host or from pods) stay on the bridge: translated
        # by kube-proxy to an endpoint, or unanswered. Never the host's default route.
        self.journal.add("route", SERVICE_CIDR, BRIDGE)
        _run("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", self.ip)

    def _make_cgroups(self) -> None:
        # The kubelet's cgroupRoot must exist in every hierarchy; pods then live below it
        # and never in the host's own cgroups.
        for mount, kind in _cgroup_mounts():
            path = mount / self.cgroup
            self.journal.add("cgroup", str(path))
            if kind == "cgroup2" and mount != Path("/sys/fs/cgroup"):
                continue  # a hybrid host's unified tree: runc makes the path itself
            path.mkdir(exist_ok=True)
            for inherited in ("cpuset.cpus", "cpuset.mems"):
                if (mount / inherited).exists() and kind == "cgroup":
                    (path / inherited).write_text((mount / inherited).read_text())

    def _write_images(self) -> list[Path]:
        pause = self.binaries["pause"]
        if not pause.is_file():
            # Upstream's own sandbox program, from the pinned Kubernetes module.
            source = module_dir("k8s.io/kubernetes") / "build/pause/linux/pause.c"
            partial = pause.with_name("pause.partial")
            _run("gcc", "-Os", "-static", f"-DVERSION={self.binaries.kubernetes_version}",
                 "-o", str(partial), str(source))
            partial.rename(pause)
        folder = self.state / "images"
        write_pause_image(folder / "pause.tar", pause)
        write_tools_image(folder / "busybox.tar", BUSYBOX)
        return sorted(folder.glob("*.tar"))

    def _start_containerd(self, images: list[Path]) -> None:
        config = self.state / "containerd.toml"
        cni = self.state / "cni"
        (cni / "net.d").mkdir(parents=True)
        (cni / "net.d" / "10-firebreak.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0",
            "name": "firebreak-realnode",
            "plugins": [{
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                # No masquerade and no default route: a pod reaches its bridge and
                # nothing beyond it.
                "ipMasq": False,
                "hairpinMode": True,
                # One route besides the bridge's own: the Service range, to this host
                # (kube-proxy), which keeps it on the bridge.
                "ipam": {"type": "host-local", "dataDir": str(cni / "ipam"),
                         "ranges": [[{"subnet": self.subnet, "gateway": self.ip}]],
                         "routes": [{"dst": SERVICE_CIDR, "gw": self.ip}]},
            }],
        }, indent=2))
        config.write_text(CONTAINERD_CONFIG.format(
            state=self.state, pause=PAUSE_IMAGE, cni_bin=_cni_dir(), cni_conf=cni / "net.d"))
        self.spawn("containerd", ["containerd", "--config", str(config)])
        _wait(lambda: subprocess.run(
            ["ctr", "--address", str(self.socket), "version"], capture_output=True).returncode == 0,
            30, "containerd to answer")
        for image in images:
            _run("ctr", "--address", str(self.socket), "-n", "k8s.io", "images", "import",
                 str(image))

    def _start_kubelet(self) -> None:
        pki = self.state / "pki"
        pki.mkdir()
        kubeconfig = self.authority.kubeconfig(
            pki / "kubelet.kubeconfig", self.server, "kubelet", f"system:node:{self.name}",
            organization="system:nodes")
        serving = self.authority.issue("kubelet-serving", self.name, server=True,
                                       ips=(self.ip,), into=pki)
        config = self.state / "kubelet.yaml"
        config.write_text(yaml.safe_dump(kubelet_configuration(
            address=self.ip, cgroup_root=f"/{self.cgroup}", state=self.state,
            client_ca=self.authority.certificate, serving=serving)))
        self.spawn("kubelet", [
            str(self.binaries["kubelet"]),
            f"--config={config}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.state / 'kubelet'}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.ip}",
            f"--node-labels={REAL_NODE_LABEL}=true",
            # Only pods that ask for this node (local images, never pulled) come here.
            f"--register-with-taints={REAL_NODE_LABEL}=true:NoSchedule",
            "--v=1",
        ])
        self.journal.add("node", self.name)

    def _wait_ready(self) -> None:
        def ready() -> bool:
            out = self.kubectl("get", "node", self.name, "--ignore-not-found", "-o",
                               "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                               check=False)
            return out.strip() == "True"

        _wait(ready, 120, f"node {self.name} to be Ready")

    def _start_enforcer(self) -> None:
        kubeconfig = self.authority.kubeconfig(
            self.state / "pki" / "kube-router.kubeconfig", self.server, "kube-router",
            "firebreak:kube-router", organization="system:masters")
        self.spawn("kube-router", [
            str(self.binaries["kube-router"]),
            f"--kubeconfig={kubeconfig}",
            f"--hostname-override={self.name}",
            # The NetworkPolicy firewall alone: no routing, no service proxy (the
            # advisories reported for this release concern the proxy), no CNI.
            "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
            "--enable-cni=false", "--health-port=0", "--metrics-port=0", "--v=1",
        ])
        # Its filter chain in FORWARD means the policies of this node's pods are in place.
        _wait(lambda: subprocess.run(["iptables", "-S", "KUBE-ROUTER-FORWARD"],
                                     capture_output=True).returncode == 0,
              60, "kube-router to program its firewall")

    def _publish_api_server(self) -> None:
        """The ``kubernetes`` Service's endpoint: this node's bridge address, where a
        relay passes connections on to the API server on loopback (same port)."""
        port = urllib.parse.urlsplit(self.server).port
        assert port is not None
        self.spawn("apiserver-relay", [sys.executable, str(RELAY), self.ip, str(port),
                                       "127.0.0.1", str(port), str(self.state)])
        _wait(lambda: _connects(self.ip, port), 30, "the API server relay to listen")
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(
            api_server_endpoints(self.ip, port)))

    def _start_proxy(self) -> None:
        kubeconfig = self.authority.kubeconfig(
            self.state / "pki" / "kube-proxy.kubeconfig", self.server, "kube-proxy",
            "system:kube-proxy")
        self.spawn("kube-proxy", [
            str(self.binaries["kube-proxy"]),
            f"--kubeconfig={kubeconfig}",
            f"--hostname-override={self.name}",
            "--proxy-mode=iptables",
            f"--cluster-cidr={self.subnet}",
            f"--bind-address={self.ip}",
            # NodePorts only on the bridge address, never on loopback (which would need
            # route_localnet) or this host's other interfaces.
            f"--nodeport-addresses={self.ip}/32",
            "--iptables-localhost-nodeports=false",
            # Leave the host's conntrack settings and this process's OOM score as found.
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            "--oom-score-adj=0",
            # No health server; metrics (which it cannot do without) on loopback only.
            "--healthz-port=0", f"--metrics-bind-address=127.0.0.1:{_free_port()}",
            "--v=1",
        ])

        def programmed() -> bool:
            rules = subprocess.run(["iptables", "-t", "nat", "-S", "KUBE-SERVICES"],
                                   capture_output=True, text=True).stdout
            return "default/kubernetes:https" in rules

        _wait(programmed, 60, "kube-proxy to program the kubernetes Service")

    def import_image(self, archive: Path, name: str | None = None) -> None:
        """Import an image archive into the node's containerd (``ctr images import``),
        and name it ``name`` too (the node runs only ``localhost/`` names)."""
        out = _run("ctr", "--address", str(self.socket), "-n", "k8s.io", "images", "import",
                   str(archive))
        if name:
            imported = next((word for line in out.splitlines() for word in line.split()
                             if ":" in word and not word.startswith("sha256:")), None)
            if imported is None:
                raise RealNodeError(f"ctr named no image importing {archive}: {out}")
            _run("ctr", "--address", str(self.socket), "-n", "k8s.io", "images", "tag",
                 "--force", imported, name)

    # -- stopping

    def drain(self) -> None:
        if "node" in {kind for kind, *_ in self.journal.entries()}:
            drain(self.kubectl, self.name)


def drain(kubectl: Kubectl, name: str = NODE_NAME) -> None:
    """With the API server still up: let the kubelet take its pods down (CNI DEL,
    sandboxes), then remove the Node."""
    kubectl("delete", "pods", "-A", "--field-selector", f"spec.nodeName={name}",
            "--wait=true", "--timeout=60s", check=False)
    kubectl("delete", "node", name, "--ignore-not-found", "--timeout=30s", check=False)


def api_server_endpoints(ip: str, port: int) -> list[dict[str, Any]]:
    """The ``kubernetes`` Service's endpoints (the API server runs with
    ``--endpoint-reconciler-type=none``, so nothing else writes them)."""
    labels = {"kubernetes.io/service-name": "kubernetes",
              "endpointslice.kubernetes.io/managed-by": "realnode.firebreak.dev"}
    return [
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]},
        {"apiVersion": "v1", "kind": "Endpoints",
         "metadata": {"name": "kubernetes", "namespace": "default"},
         "subsets": [{"addresses": [{"ip": ip}],
                      "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]},
    ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def kubelet_configuration(*, address: str, cgroup_root: str, state: Path, client_ca: Path,
                          serving: tuple[Path, Path]) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": address,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "tlsCertFile": str(serving[0]),
        "tlsPrivateKeyFile": str(serving[1]),
        # Only callers with a certificate of the cluster's CA, each asked about at the
        # API server: no anonymous access to logs, exec or pods.
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(client_ca)}},
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "cgroupsPerQOS": True,
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{state / 'containerd.sock'}",
        "podLogsDir": str(state / "pod-logs"),
        # No resolver of this machine for pods: no DNS query may leave it.
        "resolvConf": "",
        "clusterDomain": "cluster.local",
        "evictionHard": {"memory.available": "1%", "nodefs.available": "1%",
                         "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
        # Imported images cannot be pulled again: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "maxPods": 50,
        "serializeImagePulls": False,
    }


# Defence in depth behind the taint: a pod that could be scheduled to the real node
# (it tolerates the taint) must name only local images and never pull, so nothing on
# this node ever asks a registry, or a resolver, for anything.
LOCAL_IMAGES_ONLY = f"""
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: firebreak-real-node-local-images}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - {{apiGroups: [""], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [pods]}}
  matchConditions:
    - name: tolerates-the-real-node
      expression: >-
        has(object.spec.tolerations) && object.spec.tolerations.exists(t,
          (!has(t.key) || t.key == '' || t.key == '{REAL_NODE_LABEL}') &&
          (!has(t.effect) || t.effect == '' || t.effect == 'NoSchedule'))
  validations:
    - expression: >-
        object.spec.containers.all(c, c.image.startsWith('localhost/') &&
          c.imagePullPolicy == 'Never') &&
        (!has(object.spec.initContainers) || object.spec.initContainers.all(c,
          c.image.startsWith('localhost/') && c.imagePullPolicy == 'Never'))
      message: >-
        pods that may run on the real test node use local images (localhost/...) with
        imagePullPolicy Never; nothing is pulled on this machine
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: firebreak-real-node-local-images}}
spec:
  policyName: firebreak-real-node-local-images
  validationActions: [Deny]
"""


CONTAINERD_CONFIG = """\
version = 2
root = "{state}/containerd/root"
state = "{state}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{state}/containerd.sock"
[ttrpc]
  address = "{state}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{state}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  disable_apparmor = true
  # The kubelet asks oom_score_adj -998 for sandboxes; lowering it needs
  # CAP_SYS_RESOURCE, which root in a container may lack (runc then fails with
  # "can't get final child's PID from pipe"). Keep containers at containerd's own.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{state}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""


def _wait(probe: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise RealNodeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


# --- undoing ------------------------------------------------------------------------


def clean_host(state: Path) -> None:
    """Undo everything the node in ``state`` changed on this host, from its files
    alone. Safe to run again, and after a killed run: processes of the node that
    still run (found by the state folder in their command line, or in the node's
    cgroups) are killed first."""
    journal = Journal(state / "journal")
    entries = journal.entries()
    _kill_node_processes(state, [Path(what) for kind, what, *_ in entries if kind == "cgroup"])
    _unmount_below(state)
    _clean_netns(state)
    if not [f for f in live_node_folders() if f != state]:
        # The KUBE-* chains and sets are shared by whichever node runs: never pull
        # them from under a live one.
        _clean_netfilter(state)
    for kind, what, *more in reversed(entries):
        if kind == "route":
            _run("ip", "route", "del", what, "dev", *more, check=False)
        elif kind == "link":
            _run("ip", "link", "del", what, check=False)
        elif kind == "cgroup":
            _remove_cgroup(Path(what))
        elif kind == "path":
            _unmount_below(Path(what))
            shutil.rmtree(what, ignore_errors=True)
    _restore_sysctls(state)
    with contextlib.suppress(FileNotFoundError):
        _registry_entry(state).unlink()
    with contextlib.suppress(OSError):
        _registry().rmdir()


def _kill_node_processes(state: Path, cgroups: list[Path]) -> None:
    # The daemons and containerd's shims name the state folder in their command line;
    # the containers themselves live in the node's cgroups. Kill by pid, nothing else.
    marker = str(state).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
    for _ in range(3):
        pids = {int(pid) for cgroup in cgroups if cgroup.is_dir()
                for procs in cgroup.rglob("cgroup.procs")
                for pid in _read(procs).split()}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _unmount_below(folder: Path) -> None:
    # Overlay root file systems, kubelet volumes, shm: deepest first.
    prefix = str(folder.resolve()) + "/"
    targets = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for target in sorted((t for t in targets if t.startswith(prefix)), reverse=True):
        if subprocess.run(["umount", target], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", target], capture_output=True)


def _clean_netns(state: Path) -> None:
    # Pod network namespaces are bind mounts in /run/netns; remove the ones the node made.
    netns = Path("/run/netns")
    before = set(_read(state / "netns.before").split())
    if not netns.is_dir():
        return
    for entry in netns.iterdir():
        if entry.name.startswith("cni-") and entry.name not in before:
            subprocess.run(["umount", str(entry)], capture_output=True)
            entry.unlink(missing_ok=True)


def _clean_netfilter(state: Path) -> None:
    """Tables that did not exist before go whole (the kubelet's and kube-router's); in
    tables that did, only KUBE-* chains and the rules that jump to them."""
    before_file = state / "nft-tables.before"
    if not before_file.exists():
        return
    before = set(before_file.read_text().splitlines())
    for line in _run("nft", "list", "tables", check=False).splitlines():
        if line and line not in before:
            family, name = line.split()[1:3]
            _run("nft", "delete", "table", family, name, check=False)
    for command in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            saved = _run(f"{command}-save", "-t", table, check=False)
            chains = [line[1:].split()[0] for line in saved.splitlines()
                      if line.startswith(":KUBE-")]
            if not chains:
                continue
            for line in saved.splitlines():
                if line.startswith("-A ") and " -j KUBE-" in line and not line.startswith("-A KUBE-"):
                    _run(command, "-t", table, "-D", *line[3:].split(), check=False)
            for flag in ("-F", "-X"):
                for chain in chains:
                    _run(command, "-t", table, flag, chain, check=False)
    ipsets_before = set(_read(state / "ipsets.before").split())
    for name in _run("ipset", "list", "-n", check=False).split():
        if name not in ipsets_before:
            _run("ipset", "destroy", name, check=False)


def _remove_cgroup(path: Path) -> None:
    if not path.is_dir():
        return
    for folder in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def _restore_sysctls(state: Path) -> None:
    try:
        before: dict[str, str] = json.loads((state / "sysctls.before").read_text())
    except (OSError, ValueError):
        return
    for name, value in before.items():
        path = Path("/proc/sys", name)
        with contextlib.suppress(OSError):
            if path.read_text().strip() != value:
                path.write_text(value)


def sweep() -> None:
    """Clean up after real nodes whose owner died without stopping them."""
    for folder in list(_node_folders()):
        if not _owner_alive(folder):
            clean_host(folder)
            shutil.rmtree(folder, ignore_errors=True)
