"""Build the local cluster's binaries from upstream Go source, once per version.

kind needs a container engine; this project's tests need a real API server and one
real node, so we build kube-apiserver, kube-controller-manager, kube-scheduler,
kubectl, etcd, kubelet, kube-proxy and kwok from the Go modules pinned in
``kubernetes/go.mod`` and ``kwok/go.mod``, kube-router (the real node's NetworkPolicy
enforcer) from ``kuberouter/go.mod``, and cyclonus (an independent NetworkPolicy analyser the tests
check the quarantine judge against) from ``cyclonus/go.mod``.

The result is cached under ``~/.cache/firebreak/controlplane/<key>``, where the key
hashes the module files and the Go version: a second run finds the binaries and
returns in well under a second, and a change of any pin builds a fresh set. Go's own
build cache keeps a rebuild after a pin change incremental.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
KUBERNETES_MODULE = HERE / "kubernetes"
KWOK_MODULE = HERE / "kwok"
KUBE_ROUTER_MODULE = HERE / "kuberouter"
CYCLONUS_MODULE = HERE / "cyclonus"
MODULES = (KUBERNETES_MODULE, KWOK_MODULE, KUBE_ROUTER_MODULE, CYCLONUS_MODULE)

# kwok's stage definitions (what a fake node or pod does over time) ship in its
# module; they are read from there at build time rather than copied into this repo.
KWOK_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)

KUBERNETES_PROGRAMS = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
    "etcd": "go.etcd.io/etcd/server/v3",
}
KUBE_ROUTER_PROGRAMS = {"kube-router": "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"}
CYCLONUS_PROGRAMS = {"cyclonus": "github.com/mattfenwick/cyclonus/cmd/cyclonus"}


@dataclass(frozen=True)
class Binaries:
    """Where the built programs live."""

    directory: Path

    def __getitem__(self, program: str) -> Path:
        return self.directory / program

    @property
    def kwok_stages(self) -> Path:
        return self.directory / "kwok-stages.yaml"

    @property
    def kubernetes_version(self) -> str:
        return _required_version(KUBERNETES_MODULE / "go.mod", "k8s.io/kubernetes")


def cache_root() -> Path:
    configured = os.environ.get("FIREBREAK_CONTROLPLANE_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "firebreak" / "controlplane"


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise SystemExit("Go is required to build the local control plane; install Go 1.26 or newer.")
    return go


def _cache_key(go: str) -> str:
    digest = hashlib.sha256()
    for module in MODULES:
        for name in ("go.mod", "go.sum"):
            digest.update((module / name).read_bytes())
    digest.update(subprocess.run([go, "version"], check=True, capture_output=True).stdout)
    return digest.hexdigest()[:16]


def _required_version(go_mod: Path, module: str) -> str:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod.read_text(), re.M)
    if match is None:
        raise RuntimeError(f"{go_mod} does not require {module}")
    return match.group(1)


def _build(go: str, module: Path, target: Path, packages: dict[str, str], ldflags: str) -> None:
    env = {**os.environ, "CGO_ENABLED": "0"}
    for program, package in packages.items():
        print(f"  building {program} ({package})", file=sys.stderr, flush=True)
        subprocess.run(
            [go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(target / program), package],
            cwd=module,
            env=env,
            check=True,
        )


def _version_ldflags(version: str) -> str:
    # Upstream's build stamps these so that /version and `kubectl version` tell the truth.
    major, minor = version.lstrip("v").split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(["-s", "-w", *flags])


def module_dir(module: str, within: Path = KUBERNETES_MODULE) -> Path:
    """Where Go keeps the source of ``module`` as pinned by ``within``'s go.mod."""
    return Path(subprocess.run(
        [_go(), "list", "-m", "-f", "{{.Dir}}", module],
        cwd=within, check=True, capture_output=True, text=True,
    ).stdout.strip())


def built(program: str) -> Path | None:
    """The cached binary for the pinned versions, if it has been built; never builds."""
    go = shutil.which("go")
    if go is None:
        return None
    path = cache_root() / _cache_key(go) / program
    return path if path.is_file() else None


def ensure_binaries() -> Binaries:
    """Return the binaries for the pinned versions, building them on first use."""
    go = _go()
    target = cache_root() / _cache_key(go)
    binaries = Binaries(target)
    wanted = [*KUBERNETES_PROGRAMS, *KUBE_ROUTER_PROGRAMS, *CYCLONUS_PROGRAMS, "kwok"]
    if all(binaries[p].is_file() for p in wanted) and binaries.kwok_stages.is_file():
        return binaries

    print(f"Building the local control plane into {target} (first time only)", file=sys.stderr)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _build(go, KUBERNETES_MODULE, partial, KUBERNETES_PROGRAMS,
           _version_ldflags(binaries.kubernetes_version))
    _build(go, KWOK_MODULE, partial, {"kwok": "sigs.k8s.io/kwok/cmd/kwok"}, "-s -w")
    _build(go, KUBE_ROUTER_MODULE, partial, KUBE_ROUTER_PROGRAMS, "-s -w")
    _build(go, CYCLONUS_MODULE, partial, CYCLONUS_PROGRAMS, "-s -w")

    kwok_dir = module_dir("sigs.k8s.io/kwok", KWOK_MODULE)
    stages = [Path(kwok_dir, stage).read_text() for stage in KWOK_STAGES]
    (partial / "kwok-stages.yaml").write_text("\n---\n".join(stages))

    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return binaries


if __name__ == "__main__":
    print(ensure_binaries().directory)
