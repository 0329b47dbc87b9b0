"""`make bench`: how fast, and at what cost, Firebreak contains incidents.

Why it exists: Firebreak's promise is that an alert becomes an isolated pod within
moments, under an alert storm as well as on a quiet day, on a large cluster as well
as a small one, without the operator growing without bound. Those are properties of
the whole path (webhook -> intake -> SecurityIncident -> Kopf -> engine ->
NetworkPolicy) on a real API server, which no unit test sees; this bench measures
them on the local control plane (kube-apiserver, etcd, controllers and kwok nodes,
all on loopback) with ``firebreak run`` as a subprocess (admin kubeconfig, the alert
webhook on ``127.0.0.1:<free port>`` with a bearer token file) and one playbook in
``firebreak-system`` answering the bench alerts with a single ``isolateNetwork``
step (scope ``pod``).

What it measures, each scenario with a fresh operator and a cleaned-up namespace:

1. latency from the webhook POST (client-side send time) to the isolating
   NetworkPolicy being stored, taken as the client-side arrival time of the
   policy's ADDED event on a watch (each policy name is derived from the alert
   exactly as the operator derives it: ``incident_name`` -> ``IncidentRef.key``);
   also the POST round trip (time to the 200, which means "incident stored");
2. ``single``: one alert at a time (2 per second, each contained long before the
   next) on an idle cluster; ``steady``: 50 distinct alerts per second for 60 s,
   paced (send at ``t0 + i/50`` without waiting for earlier answers, bounded
   in-flight), round robin over ~200 running pods of a Deployment;
3. ``burst``: 1,000 distinct alerts as fast as 50 concurrent senders go; the time
   until all 1,000 policies exist;
4. the operator's memory: VmHWM at the end of each scenario, VmRSS every second;
   its CPU time (utime+stime) per incident; the API requests per incident (from
   the API server's ``apiserver_request_total``) and their server-side latency;
5. ``steady-large``: scenario 2 again after 500 more kwok nodes and a Deployment
   of 5,000 running pods joined the cluster, to check that the cost per incident
   does not grow with cluster size.

With ``--replicas 2`` every scenario runs two operators sharing the Lease, each
serving the webhook; alerts are spread over them round robin, as a Service spreads
them. CPU per incident is the replicas' sum, memory the larger replica's. With
``--as-installed`` the operator runs as its ServiceAccount, with the shipped RBAC and
admission policies in force, as ``kubectl apply -k manifests/`` installs it: the API
server then authorizes every request by RBAC and judges every write by the policies.

Results are printed with PASS/MISS against the targets (a miss does not fail the
run) and written as JSON to ``bench-results/bench-<UTC timestamp>.json``.

    python -m tests.bench            # the full run (about 15 minutes on 2 cores)
    python -m tests.bench --quick    # a smoke run: 5 s steady, 100 burst, 50 nodes/500 pods
    python -m tests.bench --replicas 2   # the same targets with two replicas (HA)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes import client, config

from firebreak.actions.base import IncidentRef
from firebreak.actions.network import QUARANTINE_PREFIX
from firebreak.sources.alertmanager import AlertmanagerAlert, signal_from_alert
from firebreak.sources.signal import incident_name
from tests import admission
from tests.controlplane import LocalCluster

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench-results"
OPERATOR_NS = "firebreak-system"
BENCH_NS = "bench"
BULK_NS = "bench-bulk"
TARGET_APP = "bench-target"
BULK_APP = "bulk"
PLAYBOOK = "bench-isolate"
BENCH_LABEL = "firebreak_bench"
POLICY_PREFIX = "firebreak-quarantine-"  # actions/network.py: policy_name()
TOKEN = "bench-" + hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:24]
MIB = 1024 * 1024
WINDOW = 5.0  # seconds: latency over the run, by window of send times
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Resources whose API traffic during a scenario is the operator's (and intake's).
OPERATOR_RESOURCES = ("securityincidents", "networkpolicies", "pods", "replicasets",
                      "deployments", "events", "responseplaybooks")

TARGETS = {
    # one alert at a time on an idle cluster
    "single_p50_s": 0.020,
    "single_p99_s": 0.050,
    # sustained load, keeping up
    "steady_p50_s": 0.050,
    "steady_p99_s": 0.250,
    "burst_contained_s": 20.0,
    "peak_memory_mib": 120.0,
    # per incident on the common path (steady, small cluster)
    "api_requests_per_incident": 6.0,
    "cpu_ms_per_incident": 10.0,
    # the large cluster: latency within this factor of the steady targets, and the
    # cost per incident within it of the small cluster's
    "large_factor": 1.5,
}


@dataclass(frozen=True)
class Profile:
    name: str
    small_nodes: int = 4
    bench_pods: int = 200
    single_count: int = 40
    single_rate: float = 2.0
    steady_rate: float = 50.0
    steady_seconds: float = 60.0
    steady_inflight: int = 200
    burst_count: int = 1000
    burst_concurrency: int = 50
    large_nodes: int = 500
    large_pods: int = 5000
    large_steady_seconds: float = 60.0
    settle_timeout: float = 300.0  # after the last send, for the last policy
    pods_timeout: float = 1200.0  # for the large Deployment to be Running


FULL = Profile("full")
QUICK = Profile("quick", small_nodes=2, bench_pods=50, single_count=10, steady_seconds=5.0,
                burst_count=100,
                large_nodes=50, large_pods=500, large_steady_seconds=5.0,
                settle_timeout=120.0, pods_timeout=300.0)


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


def distribution(values: Iterable[float]) -> dict[str, float]:
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "p50": round(percentile(ordered, 50), 4),
        "p95": round(percentile(ordered, 95), 4),
        "p99": round(percentile(ordered, 99), 4),
        "max": round(ordered[-1], 4),
        "mean": round(sum(ordered) / len(ordered), 4),
    }


# --- the process under test ---------------------------------------------------------


def operator_source() -> dict[str, str]:
    """A digest of the operator's code as it is now (the operator runs from the working
    tree, and a scenario measures whatever code its operator process started with)."""
    digest = hashlib.sha256()
    newest = 0.0
    for path in sorted((REPO / "operator" / "firebreak").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    return {"sha256": digest.hexdigest()[:16],
            "newest_file_mtime": dt.datetime.fromtimestamp(newest, dt.UTC).isoformat()}


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM, VmRSS (bytes) and Threads from /proc/<pid>/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
        elif key == "Threads":
            out[key] = int(value)
    return out


@dataclass
class Operator:
    """``firebreak run`` as a subprocess with the admin kubeconfig and the webhook on loopback."""

    kubeconfig: Path
    token_file: Path
    log_path: Path
    verbose: bool = False
    # The replica's name (its Lease identity), as a pod's name would be.
    name: str = ""
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        exe = shutil.which("firebreak", path=str(Path(sys.executable).parent)) or "firebreak"
        self.port = free_port()
        argv = [exe, "run", f"--kubeconfig={self.kubeconfig}", f"--namespace={OPERATOR_NS}",
                f"--webhook-address=127.0.0.1:{self.port}",
                f"--webhook-token-file={self.token_file}", "--metrics-address=127.0.0.1:0",
                # Throughput is what is measured here: no flood budget.
                "--budget-per-minute=0"]
        if self.verbose:
            argv.append("--verbose")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.name:
            env["POD_NAME"] = self.name
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-chars:]

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"the operator exited:\n{self.log_tail()}")

    async def wait_ready(self, session: aiohttp.ClientSession, within: float = 90.0) -> float:
        began = time.monotonic()
        deadline = began + within
        while time.monotonic() < deadline:
            self.check()
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                async with session.get(f"{self.url}/readyz",
                                       timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200:
                        return time.monotonic() - began
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the operator's webhook was not ready in {within:.0f}s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class Operators:
    """The replicas under test: one, or several sharing the Lease (each serves the
    webhook; alerts are spread over them round robin, as a Service would). CPU is their
    sum; memory is each replica's, and the largest is reported."""

    members: list[Operator]

    @property
    def urls(self) -> list[str]:
        return [f"{o.url}/alertmanager" for o in self.members]

    def start(self) -> None:
        for operator in self.members:
            operator.start()

    async def wait_ready(self, session: aiohttp.ClientSession) -> float:
        began = time.monotonic()
        for operator in self.members:
            await operator.wait_ready(session)
        return time.monotonic() - began

    def check(self) -> None:
        for operator in self.members:
            operator.check()

    def log_tail(self) -> str:
        return "\n".join(o.log_tail() for o in self.members)

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(o.pid) for o in self.members)

    def status(self) -> dict[str, int]:
        """The largest VmHWM and VmRSS of a replica, and the most threads."""
        each = [proc_status(o.pid) for o in self.members]
        return {key: max(e.get(key, 0) for e in each) for key in ("VmHWM", "VmRSS", "Threads")}

    def stop(self) -> None:
        for operator in self.members:
            operator.stop()


# --- the API server, asynchronously ---------------------------------------------------


class Api:
    """The few API calls the bench makes itself (admin client certificate)."""

    def __init__(self, cluster: LocalCluster, session: aiohttp.ClientSession) -> None:
        self.base = cluster.server
        self.ssl = cluster.ssl_context()
        self.session = session

    async def call(self, method: str, path: str, *, params: dict[str, str] | None = None,
                   body: Any = None, content_type: str = "application/json",
                   accept: str = "application/json", ok: Iterable[int] = (200, 201, 202),
                   seconds: float = 60.0) -> Any:
        headers = {"Accept": accept}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        async with self.session.request(method, self.base + path, params=params, data=data,
                                        headers=headers, ssl=self.ssl,
                                        timeout=aiohttp.ClientTimeout(total=seconds)) as r:
            text = await r.text()
            if r.status not in tuple(ok):
                raise RuntimeError(f"{method} {path} -> {r.status}: {text[:500]}")
            return json.loads(text) if text and accept.startswith("application/json") else text

    async def items(self, path: str, params: dict[str, str] | None = None,
                    metadata_only: bool = False, pages: int = 200) -> list[dict[str, Any]]:
        """Every item of a list, 500 per page (bounded to ``pages`` pages)."""
        accept = ("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
                  if metadata_only else "application/json")
        out: list[dict[str, Any]] = []
        query = {**(params or {}), "limit": "500"}
        for _ in range(pages):
            page = await self.call("GET", path, params=query, accept=accept)
            out.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return out
            query["continue"] = token
        raise RuntimeError(f"more than {pages} pages listing {path}")

    async def merge_patch(self, path: str, body: dict[str, Any],
                          ok: Iterable[int] = (200, 201)) -> Any:
        return await self.call("PATCH", path, body=body,
                               content_type="application/merge-patch+json", ok=ok)

    async def metrics(self) -> dict[tuple[str, str, str, str], list[float]]:
        """apiserver_request_total and _duration_seconds_{sum,count} by (verb, resource,
        subresource, code-or-""): [count, duration sum, duration count]."""
        text = await self.call("GET", "/metrics", accept="text/plain")
        out: dict[tuple[str, str, str, str], list[float]] = {}
        for line in text.splitlines():
            name, _, rest = line.partition("{")
            if name not in ("apiserver_request_total", "apiserver_request_duration_seconds_sum",
                            "apiserver_request_duration_seconds_count"):
                continue
            labels_text, _, value = rest.rpartition("} ")
            labels = dict(re.findall(r'(\w+)="([^"]*)"', labels_text))
            if labels.get("resource", "") == "":
                continue
            if name == "apiserver_request_total":
                key = (labels.get("verb", ""), labels["resource"], labels.get("subresource", ""),
                       labels.get("code", ""))
                out.setdefault(key, [0.0, 0.0, 0.0])[0] += float(value)
            else:
                key = (labels.get("verb", ""), labels["resource"], labels.get("subresource", ""), "")
                slot = 1 if name.endswith("_sum") else 2
                out.setdefault(key, [0.0, 0.0, 0.0])[slot] += float(value)
        return out


def api_traffic(before: dict[tuple[str, str, str, str], list[float]],
                after: dict[tuple[str, str, str, str], list[float]],
                incidents: int) -> list[dict[str, Any]]:
    """Requests per incident to the operator's resources during a scenario, with the
    API server's mean latency for each kind of request."""
    calls: Counter[tuple[str, str, str]] = Counter()
    codes: dict[tuple[str, str, str], Counter[str]] = {}
    durations: dict[tuple[str, str, str], tuple[float, float]] = {}
    for key, values in after.items():
        verb, resource, sub, code = key
        if verb in ("WATCH", "WATCHLIST", "CONNECT"):
            continue  # long-running: counted when they end, not when they start
        old = before.get(key, [0.0, 0.0, 0.0])
        short = (verb, resource, sub)
        if resource not in OPERATOR_RESOURCES:
            # Everyone else's traffic (controllers, kwok, the bench's own watch), in one row.
            short = ("*", "(other resources)", "")
        if code:
            delta = values[0] - old[0]
            if delta > 0:
                calls[short] += int(delta)
                codes.setdefault(short, Counter())[code] += int(delta)
        else:
            total, n = durations.get(short, (0.0, 0.0))
            durations[short] = (total + values[1] - old[1], n + values[2] - old[2])
    rows = []
    for short, count in sorted(calls.items(), key=lambda kv: -kv[1]):
        total, n = durations.get(short, (0.0, 0.0))
        rows.append({
            "verb": short[0], "resource": short[1] + (f"/{short[2]}" if short[2] else ""),
            "requests": count, "per_incident": round(count / max(incidents, 1), 2),
            "codes": dict(codes.get(short, {})),
            "server_mean_ms": round(1000 * total / n, 1) if n else None,
        })
    return rows


class Watch:
    """A watch on one kind of object in one namespace, noting the client-side arrival
    time of events (subclasses decide which)."""

    def __init__(self, api: Api, path: str) -> None:
        self.api, self.path = api, path
        self.ready = asyncio.Event()
        self.reconnects = 0

    def observe(self, kind: str, obj: dict[str, Any], arrived: float) -> None:
        raise NotImplementedError

    async def run(self, deadline: float, max_reconnects: int = 1000) -> None:
        resource_version = ""
        while time.monotonic() < deadline and self.reconnects < max_reconnects:
            if not resource_version:
                listed = await self.api.call("GET", self.path, params={"limit": "1"})
                resource_version = listed["metadata"]["resourceVersion"]
            params = {"watch": "1", "resourceVersion": resource_version,
                      "allowWatchBookmarks": "true", "timeoutSeconds": "120"}
            try:
                async with self.api.session.get(
                        self.api.base + self.path, params=params, ssl=self.api.ssl,
                        timeout=aiohttp.ClientTimeout(total=None, sock_read=180)) as response:
                    if response.status != 200:
                        raise RuntimeError(f"watch {self.path} -> {response.status}")
                    self.ready.set()
                    async for line in response.content:
                        arrived = time.monotonic()
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            resource_version = ""  # 410 Gone: list again
                            break
                        resource_version = (obj.get("metadata") or {}).get(
                            "resourceVersion", resource_version)
                        self.observe(event.get("type", ""), obj, arrived)
            except (TimeoutError, aiohttp.ClientError, OSError):
                await asyncio.sleep(0.2)
            self.reconnects += 1


class PolicyWatch(Watch):
    """NetworkPolicies: when each one's ADDED event arrived, by name."""

    def __init__(self, api: Api, namespace: str) -> None:
        super().__init__(api, f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies")
        self.added: dict[str, float] = {}

    def observe(self, kind: str, obj: dict[str, Any], arrived: float) -> None:
        if kind == "ADDED":
            self.added.setdefault(obj["metadata"].get("name", ""), arrived)

    async def wait_for(self, names: Iterable[str], within: float,
                       alive: Callable[[], None] | None = None) -> bool:
        wanted = set(names)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if wanted.issubset(self.added.keys()):
                return True
            if alive is not None:
                alive()
            await asyncio.sleep(0.05)
        return wanted.issubset(self.added.keys())


STAGES = ("stored", "finalizer", "triaged", "running", "applied", "contained")


class StageWatch(Watch):
    """SecurityIncidents (``--stages`` only): when each incident was first seen stored,
    with Kopf's finalizer, triaged, with its step Running, Applied, and Contained."""

    def __init__(self, api: Api, namespace: str) -> None:
        super().__init__(api, f"/apis/firebreak.dev/v1alpha1/namespaces/{namespace}/securityincidents")
        self.seen: dict[str, dict[str, float]] = {}
        self.events: Counter[str] = Counter()

    def observe(self, kind: str, obj: dict[str, Any], arrived: float) -> None:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        name = meta.get("name", "")
        self.events[kind] += 1
        marks = self.seen.setdefault(name, {})
        steps = status.get("actions") or [{}]
        reached = {
            "stored": kind in ("ADDED", "MODIFIED"),
            "finalizer": "firebreak.dev/finalizer" in (meta.get("finalizers") or ()),
            "triaged": any(c.get("type") == "Triaged" and c.get("status") == "True"
                           for c in status.get("conditions") or ()),
            "running": steps[0].get("state") in ("Running", "Applied"),
            "applied": steps[0].get("state") == "Applied",
            "contained": status.get("phase") == "Contained",
        }
        for stage, done in reached.items():
            if done:
                marks.setdefault(stage, arrived)


# --- alerts ------------------------------------------------------------------------------


@dataclass
class Shot:
    """One alert: its body, the incident and policy it must produce, and its timings."""

    index: int
    pod: str
    body: bytes
    incident: str
    policy: str
    scheduled: float = math.nan
    sent: float = math.nan
    answered: float = math.nan
    status: int = 0
    error: str = ""
    returned: str = ""


def make_shot(run_id: str, tag: str, index: int, pod: str) -> Shot:
    alert_name = f"FirebreakBench-{tag}-{index:05d}"
    fingerprint = hashlib.sha256(f"{run_id}/{tag}/{index}".encode()).hexdigest()[:16]
    alert = {
        "status": "firing",
        "labels": {"alertname": alert_name, "namespace": BENCH_NS, "pod": pod,
                   "severity": "critical", BENCH_LABEL: "true"},
        "annotations": {"summary": f"bench alert {tag}/{index} on {pod}"},
        "startsAt": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": fingerprint,
    }
    payload = {"version": "4", "groupKey": f"{{}}:{{alertname=\"{alert_name}\"}}",
               "truncatedAlerts": 0, "status": "firing", "receiver": "firebreak",
               "groupLabels": {"alertname": alert_name}, "commonLabels": alert["labels"],
               "commonAnnotations": alert["annotations"], "externalURL": "http://alertmanager.bench",
               "alerts": [alert]}
    # The names the operator will derive: the incident (the target's namespace) and
    # its quarantine policy.
    name = incident_name(signal_from_alert(AlertmanagerAlert.model_validate(alert)))
    policy = POLICY_PREFIX + IncidentRef(namespace=BENCH_NS, name=name, uid="").key
    return Shot(index, pod, json.dumps(payload).encode(), name, policy)


async def post(session: aiohttp.ClientSession, url: str, shot: Shot) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    shot.sent = time.monotonic()
    try:
        async with session.post(url, data=shot.body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=60)) as response:
            text = await response.read()
            shot.answered = time.monotonic()
            shot.status = response.status
            if response.status == 200:
                incidents = json.loads(text).get("incidents") or [{}]
                shot.returned = incidents[0].get("name", "")
            else:
                shot.error = text[:300].decode(errors="replace")
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        shot.answered = time.monotonic()
        shot.error = f"{type(exc).__name__}: {exc}"


async def send(session: aiohttp.ClientSession, urls: list[str], shots: list[Shot],
               rate: float | None, inflight: int) -> None:
    """Send every shot, round robin over ``urls``: paced at ``rate`` per second (never
    waiting for earlier answers), or as fast as ``inflight`` concurrent senders go when
    ``rate`` is None."""
    limit = asyncio.Semaphore(inflight)

    async def one(shot: Shot) -> None:
        try:
            await post(session, urls[shot.index % len(urls)], shot)
        finally:
            limit.release()

    tasks = []
    t0 = time.monotonic() + 0.05
    for i, shot in enumerate(shots):
        if rate is not None:
            shot.scheduled = t0 + i / rate
            delay = shot.scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await limit.acquire()
        if rate is None:
            shot.scheduled = time.monotonic()
        tasks.append(asyncio.create_task(one(shot)))
    await asyncio.gather(*tasks)


# --- the bench -------------------------------------------------------------------------------


@dataclass
class Bench:
    cluster: LocalCluster
    api: Api
    session: aiohttp.ClientSession
    profile: Profile
    workdir: Path
    verbose: bool
    run_id: str
    stages: bool = False
    replicas: int = 1
    as_installed: bool = False
    pods: list[str] = field(default_factory=list)
    scenarios: list[str] = field(default_factory=list)

    @property
    def token_file(self) -> Path:
        return self.workdir / "token"

    # -- set-up

    def install(self) -> None:
        kubectl = self.cluster.kubectl
        kubectl("apply", "-k", str(REPO / "crds"))
        self.cluster.wait_established("securityincidents.firebreak.dev", "responseplaybooks.firebreak.dev")
        kubectl("apply", "-f", str(REPO / "manifests" / "namespace.yaml"))
        playbook = {
            "apiVersion": "firebreak.dev/v1alpha1", "kind": "ResponsePlaybook",
            "metadata": {"name": PLAYBOOK, "namespace": OPERATOR_NS},
            "spec": {
                "priority": 1000,
                "match": {"sources": ["alertmanager"], "namespaces": [BENCH_NS],
                          "labelSelector": {"matchLabels": {BENCH_LABEL: "true"}}},
                "steps": [{"name": "isolate", "action": "isolateNetwork",
                           "params": {"scope": "pod"}}],
            },
        }
        kubectl("apply", "-f", "-", input=json.dumps(playbook))
        self.token_file.write_text(TOKEN + "\n")
        self.token_file.chmod(0o600)
        if self.as_installed:
            admission.install_rbac(self.cluster)
            admission.apply(self.cluster, admission.admission_documents(approvals=True))
            core = client.CoreV1Api(config.new_client_from_config(
                config_file=str(self.cluster.kubeconfig)))
            admission.service_account_kubeconfig(self.cluster, core, self.operator_kubeconfig)

    @property
    def operator_kubeconfig(self) -> Path:
        """The operator's identity: its ServiceAccount, bound by the shipped RBAC and
        admission policies (``--as-installed``), else the cluster's admin."""
        return self.workdir / "operator-kubeconfig" if self.as_installed \
            else self.cluster.kubeconfig

    async def deployment(self, namespace: str, app: str, replicas: int) -> None:
        self.cluster.kubectl("create", "namespace", namespace)
        await self._wait(lambda: self.api.call(
            "GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default", ok=(200, 404)),
            lambda sa: bool(sa and sa.get("kind") == "ServiceAccount"), 60,
            f"the default ServiceAccount in {namespace}")
        labels = {"app": app}
        body = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": app, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {
                    "containers": [{"name": "app", "image": "nginx:1.27"}],
                    "terminationGracePeriodSeconds": 0}},
            },
        }
        await self.api.call("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", body=body)

    async def running_pods(self, namespace: str, app: str) -> list[str]:
        items = await self.api.items(
            f"/api/v1/namespaces/{namespace}/pods", metadata_only=True,
            params={"labelSelector": f"app={app}", "fieldSelector": "status.phase=Running"})
        return sorted(p["metadata"]["name"] for p in items
                      if not p["metadata"].get("deletionTimestamp"))

    async def wait_running(self, namespace: str, app: str, count: int, within: float) -> float:
        """Seconds until ``count`` pods of the app are Running (the Deployment's readyReplicas
        is polled cheaply; the Running count is confirmed by listing)."""
        began = time.monotonic()
        deadline = began + within
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{app}"
        last_report = began
        while time.monotonic() < deadline:
            status = (await self.api.call("GET", path)).get("status") or {}
            ready = int(status.get("readyReplicas") or 0)
            if ready >= count:
                running = len(await self.running_pods(namespace, app))
                if running >= count:
                    return time.monotonic() - began
            if time.monotonic() - last_report > 15:
                print(f"   {namespace}/{app}: {ready}/{count} ready after "
                      f"{time.monotonic() - began:.0f}s", flush=True)
                last_report = time.monotonic()
            await asyncio.sleep(1.0 if ready < count else 3.0)
        raise RuntimeError(f"{count} pods of {namespace}/{app} not Running after {within:.0f}s")

    async def _wait(self, probe: Callable[[], Any], done: Callable[[Any], bool], within: float,
                    what: str, interval: float = 0.5) -> Any:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            value = await probe()
            if done(value):
                return value
            await asyncio.sleep(interval)
        raise RuntimeError(f"timed out after {within:.0f}s waiting for {what}")

    # -- between scenarios

    async def cleanup(self) -> dict[str, Any]:
        """With no operator running: drop every incident (finalizers first), policy, Event
        and quarantine label in the bench namespace, so the next scenario starts clean."""
        began = time.monotonic()
        base = f"/apis/firebreak.dev/v1alpha1/namespaces/{BENCH_NS}/securityincidents"
        incidents = await self.api.items(base, metadata_only=True)
        pending = [i["metadata"]["name"] for i in incidents if i["metadata"].get("finalizers")]
        await self._many(pending, lambda n: self.api.merge_patch(
            f"{base}/{n}", {"metadata": {"finalizers": None}}, ok=(200, 404)))
        await self.api.call("DELETE", base)
        await self.api.call("DELETE",
                            f"/apis/networking.k8s.io/v1/namespaces/{BENCH_NS}/networkpolicies")
        await self.api.call("DELETE", f"/api/v1/namespaces/{BENCH_NS}/events")
        pods = await self.api.items(f"/api/v1/namespaces/{BENCH_NS}/pods", metadata_only=True)
        relabel = {p["metadata"]["name"]: {k: None for k in p["metadata"].get("labels") or {}
                                           if k.startswith(QUARANTINE_PREFIX)} for p in pods}
        await self._many([n for n, labels in relabel.items() if labels], lambda n: self.api.merge_patch(
            f"/api/v1/namespaces/{BENCH_NS}/pods/{n}", {"metadata": {"labels": relabel[n]}},
            ok=(200, 404)))
        await self._wait(lambda: self.api.items(base, metadata_only=True), lambda v: not v, 120,
                         "the incidents to be deleted")
        return {"incidents": len(incidents), "relabelled_pods": sum(1 for v in relabel.values() if v),
                "seconds": round(time.monotonic() - began, 1)}

    async def _many(self, names: list[str], fn: Callable[[str], Any], concurrency: int = 16) -> None:
        limit = asyncio.Semaphore(concurrency)

        async def one(name: str) -> None:
            async with limit:
                await fn(name)

        await asyncio.gather(*(one(n) for n in names))

    # -- a scenario

    def control_plane_cpu(self) -> dict[str, float]:
        out = {}
        for name, proc in self.cluster.processes.items():
            with contextlib.suppress(OSError):
                out[name] = proc_cpu_seconds(proc.pid)
        return out

    def shots(self, tag: str, count: int) -> list[Shot]:
        return [make_shot(self.run_id, tag, i, self.pods[i % len(self.pods)]) for i in range(count)]

    async def scenario(self, name: str, tag: str, count: int, rate: float | None,
                       inflight: int, note: str = "") -> dict[str, Any]:
        say(f"Scenario {name}: {count} alerts "
            + (f"at {rate:g}/s" if rate else f"as fast as {inflight} senders go"))
        cleaned = await self.cleanup()
        if cleaned["incidents"]:
            print(f"   cleaned up {cleaned['incidents']} incidents, "
                  f"{cleaned['relabelled_pods']} pods in {cleaned['seconds']}s")
        shots = self.shots(tag, count)
        warm = self.shots(f"w{tag}", 3)
        watch = PolicyWatch(self.api, BENCH_NS)
        budget = 600 + count / (rate or 20) + self.profile.settle_timeout
        watch_task = asyncio.create_task(watch.run(time.monotonic() + budget))
        stage_watch = StageWatch(self.api, BENCH_NS) if self.stages else None
        stage_task = (asyncio.create_task(stage_watch.run(time.monotonic() + budget))
                      if stage_watch is not None else None)
        log_path = self.workdir / f"operator-{name}.log"
        operator = Operators([
            Operator(self.operator_kubeconfig, self.token_file, log_path.with_name(
                f"operator-{name}-{i}.log") if self.replicas > 1 else log_path, self.verbose,
                name=f"replica-{i}" if self.replicas > 1 else "")
            for i in range(self.replicas)])
        log_path = operator.members[0].log_path
        samples: list[tuple[float, int, int]] = []
        sampler: asyncio.Task[None] | None = None
        try:
            await asyncio.wait_for(watch.ready.wait(), 30)
            if stage_watch is not None:
                await asyncio.wait_for(stage_watch.ready.wait(), 30)
            source = operator_source()
            operator.start()
            started_in = await operator.wait_ready(self.session)
            # Warm-up: the playbook index loaded, every code path imported and connected.
            await send(self.session, operator.urls, warm, None, 3)
            if not await watch.wait_for([s.policy for s in warm], 90, operator.check):
                raise RuntimeError(f"warm-up alerts not contained:\n{operator.log_tail()}\n"
                                   f"{[(s.status, s.error) for s in warm]}")
            idle = await self.idle_cpu(operator, 3.0)
            metrics_before = await self.api.metrics()
            cpu_before = operator.cpu_seconds()
            cp_before = {**self.control_plane_cpu(), "bench (this process)": 0.0}
            mem_before = operator.status()

            async def sample() -> None:
                for _ in range(int(budget) + 1):
                    with contextlib.suppress(OSError):
                        status = operator.status()
                        samples.append((time.monotonic(), status.get("VmRSS", 0),
                                        status.get("Threads", 0)))
                    await asyncio.sleep(1.0)

            sampler = asyncio.create_task(sample())
            began = time.monotonic()
            self_cpu = time.process_time()
            await send(self.session, operator.urls, shots, rate, inflight)
            answered = time.monotonic()
            sent_all = max(s.sent for s in shots)
            print(f"   sent {count} in {sent_all - began:.1f}s, all answered after "
                  f"{answered - began:.1f}s; waiting for the policies", flush=True)
            complete = await watch.wait_for([s.policy for s in shots if s.status == 200],
                                            self.profile.settle_timeout, operator.check)
            cpu_contained = operator.cpu_seconds()
            cp_contained = self.control_plane_cpu()
            cp_contained["bench (this process)"] = cp_before["bench (this process)"] + (
                time.process_time() - self_cpu)
            quiet_after = await self.quiesce(operator)
            cpu_after = operator.cpu_seconds()
            mem_after = operator.status()
            metrics_after = await self.api.metrics()
            phases = Counter(
                ((i.get("status") or {}).get("phase") or "<none>") for i in await self.api.items(
                    f"/apis/firebreak.dev/v1alpha1/namespaces/{BENCH_NS}/securityincidents"))
        finally:
            if sampler is not None:
                sampler.cancel()
            operator.stop()
            for task in (watch_task, stage_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        return self.summarize(
            name=name, note=note, rate=rate, inflight=inflight, shots=shots, watch=watch,
            began=began, sent_all=sent_all, complete=complete, started_in=started_in,
            cpu=(cpu_before, cpu_contained, cpu_after), cp=(cp_before, cp_contained),
            mem=(mem_before, mem_after), samples=samples, quiet_after=quiet_after,
            traffic=api_traffic(metrics_before, metrics_after, count), phases=dict(phases),
            log_path=log_path, idle=idle, stage_watch=stage_watch, source=source)

    async def idle_cpu(self, operator: Operators, seconds: float) -> dict[str, float]:
        """CPU use (cores) of the operator and the control plane with no alerts arriving."""
        before = {**self.control_plane_cpu(), "operator": operator.cpu_seconds()}
        await asyncio.sleep(seconds)
        after = {**self.control_plane_cpu(), "operator": operator.cpu_seconds()}
        return {k: round((after.get(k, v) - v) / seconds, 3) for k, v in before.items()}

    async def quiesce(self, operator: Operators, within: float = 90.0) -> float:
        """Wait until the operator's trailing work (status writes, Events) is done: two
        consecutive seconds using under 3 % CPU. Returns the seconds waited."""
        began = time.monotonic()
        quiet = 0
        last = operator.cpu_seconds()
        while time.monotonic() - began < within and quiet < 2:
            await asyncio.sleep(1.0)
            now = operator.cpu_seconds()
            quiet = quiet + 1 if now - last < 0.03 else 0
            last = now
        return round(time.monotonic() - began, 1)

    def summarize(self, *, name: str, note: str, rate: float | None, inflight: int,
                  shots: list[Shot], watch: PolicyWatch, began: float, sent_all: float,
                  complete: bool, started_in: float, cpu: tuple[float, float, float],
                  cp: tuple[dict[str, float], dict[str, float]],
                  mem: tuple[dict[str, int], dict[str, int]], samples: list[tuple[float, int, int]],
                  quiet_after: float, traffic: list[dict[str, Any]], phases: dict[str, int],
                  log_path: Path, idle: dict[str, float], stage_watch: StageWatch | None,
                  source: dict[str, str]) -> dict[str, Any]:
        ok = [s for s in shots if s.status == 200]
        seen = [s for s in ok if s.policy in watch.added]
        latency = [watch.added[s.policy] - s.sent for s in seen]
        from_schedule = [watch.added[s.policy] - s.scheduled for s in seen]
        last_policy = max((watch.added[s.policy] for s in seen), default=math.nan)
        count = len(shots)
        cpu_total = cpu[2] - cpu[0]
        lag = [s.sent - s.scheduled for s in shots if not math.isnan(s.sent)]

        def per_incident_ms(seconds: float) -> float:
            return round(1000 * seconds / max(count, 1), 2)

        result: dict[str, Any] = {
            "name": name,
            "note": note,
            "alerts": count,
            "rate_per_s": rate,
            "inflight_limit": inflight,
            "send_seconds": round(sent_all - began, 2),
            "all_answered_after_s": round(max((s.answered for s in shots), default=began) - began, 2),
            "achieved_rate_per_s": round(count / max(sent_all - began, 1e-9), 2),
            "send_lag_s": distribution(lag),
            "post_ok": len(ok),
            "post_errors": dict(Counter(s.error[:120] or str(s.status) for s in shots
                                        if s.status != 200)),
            "name_mismatches": sum(1 for s in ok if s.returned != s.incident),
            "policies_seen": len(seen),
            "all_contained": complete and len(seen) == count,
            "latency_s": distribution(latency),
            "latency_from_schedule_s": distribution(from_schedule),
            "latency_by_window_s": by_window(
                [(s.sent - began, watch.added[s.policy] - s.sent) for s in seen], WINDOW),
            "post_rtt_s": distribution(s.answered - s.sent for s in ok),
            "all_policies_after_s": round(last_policy - began, 3) if seen else None,
            "contained_per_s": round(len(seen) / max(last_policy - began, 1e-9), 2) if seen else None,
            "operator": {
                "startup_s": round(started_in, 2),
                "cpu_seconds_to_contain": round(cpu[1] - cpu[0], 2),
                "cpu_seconds_total": round(cpu_total, 2),
                "cpu_ms_per_incident": per_incident_ms(cpu_total),
                "cpu_ms_per_incident_to_contain": per_incident_ms(cpu[1] - cpu[0]),
                "cpu_utilisation_while_containing": round(
                    (cpu[1] - cpu[0]) / max(last_policy - began, 1e-9), 2) if seen else None,
                "trailing_work_s": quiet_after,
                "vm_hwm_mib": round(mem[1].get("VmHWM", 0) / MIB, 1),
                "vm_rss_start_mib": round(mem[0].get("VmRSS", 0) / MIB, 1),
                "vm_rss_end_mib": round(mem[1].get("VmRSS", 0) / MIB, 1),
                "vm_rss_max_sampled_mib": round(max((s[1] for s in samples), default=0) / MIB, 1),
                "vm_rss_samples_mib": [round(s[1] / MIB, 1) for s in samples],
                "threads_max": max((s[2] for s in samples), default=0),
            },
            "cpu_window_s": round(last_policy - began, 2) if seen else None,
            "control_plane_cpu_seconds": {
                k: round(cp[1].get(k, 0.0) - v, 2) for k, v in cp[0].items()},
            # The operator's with its trailing work; the others' while containing.
            "cpu_ms_per_incident_by_component": {
                "operator": per_incident_ms(cpu_total),
                **{k: per_incident_ms(cp[1].get(k, 0.0) - v) for k, v in cp[0].items()}},
            "api_requests": traffic,
            "api_requests_per_incident": round(sum(
                r["requests"] for r in traffic if r["verb"] != "*") / max(count, 1), 2),
            "incident_phases": phases,
            "idle_cpu_cores_before": idle,
            "operator_source": source,
            "operator_log": str(log_path),
        }
        if stage_watch is not None:
            result["stages_s"] = stage_breakdown(ok, watch.added, stage_watch)
            result["incident_watch_events"] = dict(stage_watch.events)
        return result


def by_window(points: Iterable[tuple[float, float]], width: float) -> list[dict[str, float]]:
    """Latency over the run: for each ``width``-second window of send times (from the
    first send), how many alerts were sent in it and their latency's p50, p99 and max.
    A slow spell shows where it happened (every 30 s, with the periodic check?)."""
    windows: dict[int, list[float]] = {}
    for at, value in points:
        windows.setdefault(int(at // width), []).append(value)
    for values in windows.values():
        values.sort()
    return [{"from_s": index * width, "alerts": len(values),
             "p50": round(percentile(values, 50), 4), "p99": round(percentile(values, 99), 4),
             "max": round(max(values), 4)}
            for index, values in sorted(windows.items())]


def stage_breakdown(shots: list[Shot], policies: dict[str, float],
                    stages: StageWatch) -> dict[str, dict[str, float]]:
    """Where the time goes between the POST and the policy (and after it), from the
    client-side arrival times of the incident's watch events."""
    spans: dict[str, list[float]] = {}
    steps = [("post sent -> incident stored", "sent", "stored"),
             ("incident stored -> POST answered", "stored", "answered"),
             ("incident stored -> finalizer added", "stored", "finalizer"),
             ("finalizer -> triaged (status)", "finalizer", "triaged"),
             ("triaged -> step Running (status)", "triaged", "running"),
             ("step Running -> policy ADDED", "running", "policy"),
             ("policy ADDED -> step Applied (status)", "policy", "applied"),
             ("step Applied -> Contained", "applied", "contained")]
    for shot in shots:
        marks = {**stages.seen.get(shot.incident, {}), "sent": shot.sent, "answered": shot.answered}
        if shot.policy in policies:
            marks["policy"] = policies[shot.policy]
        for label, start, end in steps:
            if start in marks and end in marks:
                spans.setdefault(label, []).append(marks[end] - marks[start])
    return {label: distribution(spans.get(label, [])) for label, _, _ in steps}


# --- the report --------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "n/a " if ok is None else ("PASS" if ok else "MISS")


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    scenarios = {s["name"]: s for s in results["scenarios"]}
    targets: list[dict[str, Any]] = []

    def add(name: str, measured: Any, target: str, ok: bool | None) -> None:
        targets.append({"target": name, "measured": measured, "goal": target, "pass": ok})

    single = scenarios.get("single")
    if single is not None:
        lat = single["latency_s"]
        for q in ("p50", "p99"):
            goal = TARGETS[f"single_{q}_s"]
            add(f"single: {q} latency, one alert at a time", lat.get(q), f"<= {goal} s",
                single["all_contained"] and lat.get(q, 1e9) <= goal)
    for key, factor in (("steady", 1.0), ("steady-large", TARGETS["large_factor"])):
        s = scenarios.get(key)
        if s is None:
            continue
        lat = s["latency_s"]
        complete = s["all_contained"]
        for q in ("p50", "p99"):
            goal = round(TARGETS[f"steady_{q}_s"] * factor, 3)
            add(f"{key}: {q} latency at {s['rate_per_s']:g}/s", lat.get(q), f"<= {goal} s",
                complete and lat.get(q, 1e9) <= goal)
    burst = scenarios.get("burst")
    if burst is not None:
        add(f"burst: all {burst['alerts']} contained", burst["all_policies_after_s"],
            f"<= {TARGETS['burst_contained_s']} s",
            burst["all_contained"] and burst["all_policies_after_s"] is not None
            and burst["all_policies_after_s"] <= TARGETS["burst_contained_s"])
    peak = max((s["operator"]["vm_hwm_mib"] for s in results["scenarios"]), default=None)
    if peak is not None:
        add("operator peak memory (VmHWM, MiB)", peak, f"<= {TARGETS['peak_memory_mib']:g} MiB",
            peak <= TARGETS["peak_memory_mib"])
    small, large = scenarios.get("steady"), scenarios.get("steady-large")
    if small:
        requests = small["api_requests_per_incident"]
        add("API requests per incident (steady)", requests,
            f"<= {TARGETS['api_requests_per_incident']:g}",
            requests <= TARGETS["api_requests_per_incident"])
        cpu = small["operator"]["cpu_ms_per_incident"]
        add("operator CPU per incident (steady, ms)", cpu,
            f"<= {TARGETS['cpu_ms_per_incident']:g} ms", cpu <= TARGETS["cpu_ms_per_incident"])
    if small and large:
        ratio = (large["operator"]["cpu_ms_per_incident"]
                 / max(small["operator"]["cpu_ms_per_incident"], 1e-9))
        same_code = small["operator_source"]["sha256"] == large["operator_source"]["sha256"]
        add("CPU per incident, large/small cluster", round(ratio, 2),
            f"<= {TARGETS['large_factor']} (does not grow)"
            + ("" if same_code else "; NOT COMPARABLE: the operator's code changed between them"),
            ratio <= TARGETS["large_factor"] if same_code else None)
    return targets


def compare(results: dict[str, Any]) -> dict[str, Any] | None:
    scenarios = {s["name"]: s for s in results["scenarios"]}
    small, large = scenarios.get("steady"), scenarios.get("steady-large")
    if not (small and large):
        return None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(b / a, 2) if a and b is not None else None

    getters: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("latency_p50_s", lambda s: s["latency_s"].get("p50")),
        ("latency_p99_s", lambda s: s["latency_s"].get("p99")),
        ("post_rtt_p50_s", lambda s: s["post_rtt_s"].get("p50")),
        ("cpu_ms_per_incident", lambda s: s["operator"]["cpu_ms_per_incident"]),
        ("api_requests_per_incident", lambda s: s["api_requests_per_incident"]),
        ("kube_apiserver_cpu_s_per_incident",
         lambda s: round(s["control_plane_cpu_seconds"].get("kube-apiserver", 0) / s["alerts"], 4)),
    ]
    rows = {}
    for label, get in getters:
        a, b = get(small), get(large)
        rows[label] = {"small": a, "large": b, "large_over_small": ratio(a, b)}
    return rows


def fmt(value: Any, unit: str = "", scale: float = 1.0, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.{digits}f}{unit}"


def print_report(results: dict[str, Any]) -> None:
    replicas = results.get("replicas", 1)
    say("Results" + (f" ({replicas} replicas: cpu/inc is their sum, HWM and RSSmax the "
                     f"larger replica's)" if replicas > 1 else ""))
    head = (f"{'scenario':<14}{'alerts':>7}{'ok':>6}{'seen':>6}{'rate/s':>8}"
            f"{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}  {'POST p50/p99/max':>20}"
            f"{'all in':>9}{'cpu/inc':>9}{'HWM':>8}{'RSSmax':>8}{'API/inc':>8}")
    print(head)
    print("-" * len(head))
    for s in results["scenarios"]:
        lat, rtt, op = s["latency_s"], s["post_rtt_s"], s["operator"]
        rtts = "/".join(fmt(rtt.get(k), "", 1000) for k in ("p50", "p99", "max")) + " ms"
        print(f"{s['name']:<14}{s['alerts']:>7}{s['post_ok']:>6}{s['policies_seen']:>6}"
              f"{s['achieved_rate_per_s']:>8.1f}"
              + "".join(f"{fmt(lat.get(k), 'ms', 1000):>8}" for k in ("p50", "p95", "p99", "max"))
              + f"  {rtts:>20}{fmt(s['all_policies_after_s'], 's', 1, 1):>9}"
              f"{fmt(op['cpu_ms_per_incident'], 'ms', 1, 1):>9}{fmt(op['vm_hwm_mib'], 'M', 1, 0):>8}"
              f"{fmt(op['vm_rss_max_sampled_mib'], 'M', 1, 0):>8}{s['api_requests_per_incident']:>8.1f}")
    print("\nlatency = webhook POST sent -> NetworkPolicy ADDED seen on a watch; "
          "cpu/inc = operator utime+stime / alerts; API/inc = requests to the operator's "
          "resources / alerts")
    for s in results["scenarios"]:
        if s["post_errors"] or s["name_mismatches"] or not s["all_contained"]:
            print(f"{s['name']}: POST errors {s['post_errors']}, name mismatches "
                  f"{s['name_mismatches']}, policies seen {s['policies_seen']}/{s['alerts']}")
        print(f"{s['name']}: CPU ms per incident {s['cpu_ms_per_incident_by_component']}")
        print(f"{s['name']}: incident phases {s['incident_phases']}; CPU s while containing "
              f"{s['control_plane_cpu_seconds']}, operator "
              f"{s['operator']['cpu_seconds_to_contain']} "
              f"({s['operator']['cpu_utilisation_while_containing']} cores); idle cores before "
              f"{s['idle_cpu_cores_before']}")
    steady = next((s for s in results["scenarios"] if s["name"] == "steady"), None)
    if steady:
        print("\nAPI requests per incident (steady, small cluster; server-side mean latency):")
        for row in steady["api_requests"]:
            if row["per_incident"] >= 0.05:
                print(f"   {row['verb']:<7} {row['resource']:<34} {row['per_incident']:>6.2f}"
                      f"   {fmt(row['server_mean_ms'], ' ms', 1, 1)}   codes {row['codes']}")
    for s in results["scenarios"]:
        if "stages_s" in s:
            print(f"\nwhere the time goes ({s['name']}; client-side watch arrival times):")
            for label, d in s["stages_s"].items():
                print(f"   {label:<40}" + "".join(
                    f"{k} {fmt(d.get(k), 'ms', 1000):>8}  " for k in ("p50", "p95", "max")))
    for s in results["scenarios"]:
        if s["rate_per_s"] and s["latency_by_window_s"]:
            print(f"\np99 by {WINDOW:g} s of send times ({s['name']}): " + " ".join(
                fmt(w["p99"], "", 1000) for w in s["latency_by_window_s"]) + " ms")
    large = results.get("large_cluster")
    if large:
        print(f"\nlarge cluster: +{large['nodes_added']} nodes in {large['nodes_ready_s']}s, "
              f"{large['pods']} pods Running after {large['pods_running_s']}s")
    cmp_rows = results.get("small_vs_large")
    if cmp_rows:
        print("\nsmall vs large cluster (steady):")
        for label, row in cmp_rows.items():
            print(f"   {label:<36} {row['small']!s:>10} {row['large']!s:>10}   x{row['large_over_small']}")
    sources = {s["name"]: s["operator_source"]["sha256"] for s in results["scenarios"]}
    if len(set(sources.values())) > 1:
        print(f"\nWARNING: the operator's code changed during the run (source digests {sources}); "
              "scenarios ran different code")
    print("\nTargets:")
    for t in results["targets"]:
        print(f"   {verdict(t['pass'])}  {t['target']:<44} {t['measured']!s:>10}   (goal {t['goal']})")


# --- main ----------------------------------------------------------------------------------------


async def run(profile: Profile, args: argparse.Namespace, results: dict[str, Any],
              cluster: LocalCluster, workdir: Path) -> None:
    connector = aiohttp.TCPConnector(limit=max(profile.steady_inflight, profile.burst_concurrency) + 20)
    async with aiohttp.ClientSession(connector=connector, read_bufsize=1 << 20) as session:
        api = Api(cluster, session)
        bench = Bench(cluster, api, session, profile, workdir, args.verbose,
                      run_id=results["started_at"], stages=args.stages,
                      replicas=args.replicas, as_installed=args.as_installed)
        say("Installing the CRDs and the bench playbook; deploying the targets")
        bench.install()
        await bench.deployment(BENCH_NS, TARGET_APP, profile.bench_pods)
        took = await bench.wait_running(BENCH_NS, TARGET_APP, profile.bench_pods, 600)
        bench.pods = await bench.running_pods(BENCH_NS, TARGET_APP)
        print(f"   {len(bench.pods)} pods Running in {BENCH_NS} after {took:.1f}s")
        results["small_cluster"] = {"nodes": profile.small_nodes, "bench_pods": len(bench.pods),
                                    "pods_running_s": round(took, 1)}

        results["scenarios"].append(await bench.scenario(
            "single", "o", profile.single_count, profile.single_rate, 1,
            note=f"{profile.single_count} alerts, {profile.single_rate:g}/s: one at a time "
                 f"on an idle cluster"))
        results["scenarios"].append(await bench.scenario(
            "steady", "s", int(profile.steady_rate * profile.steady_seconds),
            profile.steady_rate, profile.steady_inflight,
            note=f"{profile.steady_rate:g}/s for {profile.steady_seconds:g}s"))
        results["scenarios"].append(await bench.scenario(
            "burst", "b", profile.burst_count, None, profile.burst_concurrency,
            note=f"{profile.burst_count} alerts, {profile.burst_concurrency} concurrent senders"))
        if args.skip_large:
            return

        say(f"Growing the cluster: {profile.large_nodes} kwok nodes, a Deployment of "
            f"{profile.large_pods} pods in {BULK_NS}")
        began = time.monotonic()
        cluster.add_nodes(profile.large_nodes, prefix="bench-node")
        await bench._wait(lambda: api.items("/api/v1/nodes", {"labelSelector": "type=kwok"}),
                          lambda nodes: sum(1 for n in nodes if n["metadata"]["name"].startswith(
                              "bench-node-") and any(
                              c["type"] == "Ready" and c["status"] == "True"
                              for c in (n.get("status") or {}).get("conditions") or []))
                          >= profile.large_nodes, 600, "the new nodes to be Ready", interval=2.0)
        nodes_ready = time.monotonic() - began
        print(f"   {profile.large_nodes} nodes Ready after {nodes_ready:.1f}s", flush=True)
        began = time.monotonic()
        await bench.deployment(BULK_NS, BULK_APP, profile.large_pods)
        running = await bench.wait_running(BULK_NS, BULK_APP, profile.large_pods, profile.pods_timeout)
        print(f"   {profile.large_pods} pods Running after {running:.1f}s "
              f"(from the Deployment's creation)", flush=True)
        # Let the controllers and kwok settle before measuring.
        await asyncio.sleep(10)
        results["large_cluster"] = {
            "nodes_added": profile.large_nodes, "nodes_ready_s": round(nodes_ready, 1),
            "pods": profile.large_pods, "pods_running_s": round(running, 1),
            "pods_running_s_includes": "Deployment creation -> >= pods Running (confirmed by list)",
        }
        seconds = args.large_seconds or profile.large_steady_seconds
        results["scenarios"].append(await bench.scenario(
            "steady-large", "l", int(profile.steady_rate * seconds), profile.steady_rate,
            profile.steady_inflight,
            note=f"{profile.steady_rate:g}/s for {seconds:g}s with {profile.large_nodes} more nodes "
                 f"and {profile.large_pods} more pods"
                 + ("" if seconds == profile.steady_seconds else
                    f" (shortened from {profile.steady_seconds:g}s)")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 5 s steady, 100 burst, 50 nodes / 500 pods")
    parser.add_argument("--skip-large", action="store_true",
                        help="only the small-cluster scenarios (steady, burst)")
    parser.add_argument("--steady-seconds", type=float, default=None,
                        help="length of the steady run (default: 60, or 5 with --quick)")
    parser.add_argument("--rate", type=float, default=None,
                        help="alerts per second of the steady runs (default: 50)")
    parser.add_argument("--large-seconds", type=float, default=None,
                        help="length of the large-cluster steady run (default: as steady)")
    parser.add_argument("--verbose", action="store_true",
                        help="run the operator with --verbose (its logs cost it CPU)")
    parser.add_argument("--stages", action="store_true",
                        help="also watch the incidents and break the latency down by stage "
                             "(the extra watch costs the API server a little)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="operator replicas sharing the Lease; alerts are spread over "
                             "them round robin (default: 1)")
    parser.add_argument("--as-installed", action="store_true",
                        help="run the operator as its ServiceAccount, with manifests/rbac.yaml "
                             "and the admission policies of manifests/admission.yaml in force "
                             "(default: the cluster's admin, no admission policies)")
    parser.add_argument("--keep-logs", type=Path, default=None,
                        help="copy the operator logs to this folder")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.steady_seconds:
        profile = replace(profile, steady_seconds=args.steady_seconds)
    if args.rate:
        profile = replace(profile, steady_rate=args.rate)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    results: dict[str, Any] = {
        "started_at": stamp,
        "profile": asdict(profile),
        "targets_definition": TARGETS,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "platform": platform.platform()},
        "stages_watch": args.stages,
        "replicas": args.replicas,
        "operator_source_at_start": operator_source(),
        "as_installed": args.as_installed,
        "operator_flags": [f"--kubeconfig=<{'its ServiceAccount' if args.as_installed else 'admin'}>",
                           f"--namespace={OPERATOR_NS}",
                           "--webhook-address=127.0.0.1:<free port>",
                           "--webhook-token-file=<file>"] + (["--verbose"] if args.verbose else []),
        "scenarios": [],
    }
    # kwok nodes only: a real node's kubelet and enforcer would take CPU from what is
    # measured (the dataplane has its own bench, tests/bench_dataplane.py).
    say(f"Starting the local control plane ({profile.small_nodes} kwok nodes); profile {profile.name}")
    began = time.monotonic()
    error: str | None = None
    with tempfile.TemporaryDirectory(prefix="firebreak-bench-") as tmp, \
            LocalCluster.started(nodes=profile.small_nodes, real_node=False) as cluster:
        workdir = Path(tmp)
        print(f"   ready in {time.monotonic() - began:.1f}s")
        try:
            asyncio.run(run(profile, args, results, cluster, workdir))
        except (TimeoutError, RuntimeError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            print(f"\nbench aborted: {error}", file=sys.stderr)
        finally:
            if args.keep_logs is not None:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for log in workdir.glob("operator-*.log"):
                    shutil.copy(log, args.keep_logs / log.name)
    results["error"] = error
    results["wall_seconds"] = round(time.monotonic() - began, 1)
    results["small_vs_large"] = compare(results)
    results["targets"] = evaluate(results)
    for s in results["scenarios"]:
        if args.keep_logs is not None:
            s["operator_log"] = str(args.keep_logs / Path(s["operator_log"]).name)
        else:
            s.pop("operator_log", None)
    if results["scenarios"]:
        print_report(results)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {out.relative_to(REPO)}  (wall time {results['wall_seconds']:.0f}s)")
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
