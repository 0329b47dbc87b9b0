"""`make bench`, the dataplane part: how soon a quarantine stops packets, and what it
does not stop.

Why it exists: ``Contained`` is written when the isolating NetworkPolicy and the
quarantine label are stored; packets stop only once the node's enforcer has
programmed them. This measures that gap on the real node with real traffic, and
whether a connection opened *before* the quarantine keeps flowing after it (an
enforcer that accepts tracked connections first lets it).

Method, on the real node of the local cluster (kube-router's firewall):
- a ``web`` pod serves HTTP and accepts a TCP stream on port 9000; a ``prober`` pod
  sends a request every ~50 ms and logs each request's start time (from
  ``/proc/uptime``: one kernel, one clock for pods and host) and its outcome; a
  ``streamer`` pod opens one TCP connection to port 9000 and writes a timestamped
  line every 100 ms, which ``web`` logs as it receives them;
- the isolateNetwork action (the operator's own code, scope pod) is applied to
  ``web``; the host notes the clock when apply returns;
- the logs then tell: the first blocked request after apply, the last request that
  still got through, and the last line of the established stream that arrived.

    python -m tests.bench_dataplane [--rounds 5] [--window 8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client, config

from firebreak.actions.base import ActionContext, IncidentRef
from firebreak.actions.network import IsolateNetwork
from firebreak.api import Target, TargetKind
from firebreak.config import OperatorConfig
from firebreak.kube import Kube
from tests.controlplane import LocalCluster
from tests.helpers import HTTP_PORT, real_pod, start_pods

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench-results"
STREAM_PORT = 9000


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def web() -> client.V1Pod:
    return real_pod("web", (
        "mkdir -p /www && echo ok > /www/index.html && httpd -p 8080 -h /www && "
        # nc ends the connection when its standard input ends: give it one that never does.
        f"sleep 1000000 | nc -l -p {STREAM_PORT}"))


def prober(ip: str) -> client.V1Pod:
    return real_pod("prober", (
        "while true; do t=$(cut -d' ' -f1 /proc/uptime); "
        f"if timeout 1 wget -q -O /dev/null http://{ip}:{HTTP_PORT}/; then echo \"$t ok\"; "
        "else echo \"$t blocked\"; fi; usleep 50000; done"))


def streamer(ip: str) -> client.V1Pod:
    return real_pod("streamer", (
        "sleep 1; while true; do echo \"line $(cut -d' ' -f1 /proc/uptime)\"; usleep 100000; done "
        f"| nc {ip} {STREAM_PORT}"))


def parse_probes(log: str) -> list[tuple[float, bool]]:
    probes = []
    for line in log.splitlines():
        stamp, _, outcome = line.partition(" ")
        if outcome in ("ok", "blocked"):
            probes.append((float(stamp), outcome == "ok"))
    return probes


def round_once(cluster: LocalCluster, core: client.CoreV1Api, kube: Kube, window: float
               ) -> dict[str, Any]:
    namespace = f"dataplane-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        for _ in range(100):
            if core.list_namespaced_service_account(namespace).items:
                break
            time.sleep(0.1)
        ip = start_pods(core, namespace, web())["web"]
        start_pods(core, namespace, prober(ip), streamer(ip))
        time.sleep(2)  # a steady stream of successful probes before the quarantine
        action = IsolateNetwork()
        ctx = ActionContext(
            kube=kube, config=OperatorConfig(namespace="firebreak-system"),
            incident=IncidentRef(namespace=namespace, name="dataplane", uid=str(uuid.uuid4())),
            target=Target(kind=TargetKind.pod, namespace=namespace, name="web"),
            step="isolate", labels={}, now=dt.datetime.now(dt.UTC))
        params = action.parse({"scope": "pod"})
        prepared = action.prepare(ctx, params)
        began = uptime()
        action.apply(ctx, params, prepared.record)
        applied = uptime()
        time.sleep(window)
        probes = parse_probes(cluster.kubectl("logs", "-n", namespace, "prober"))
        stream = [float(line.split()[1]) for line in
                  cluster.kubectl("logs", "-n", namespace, "web").splitlines()
                  if line.startswith("line ")]
        after = [(t, ok) for t, ok in probes if t >= began]
        first_blocked = next((t for t, ok in after if not ok), None)
        last_ok = max((t for t, ok in after if ok), default=None)
        return {
            "apply_seconds": round(applied - began, 3),
            "first_blocked_after_apply_s": None if first_blocked is None
            else round(first_blocked - applied, 3),
            "last_ok_after_apply_s": None if last_ok is None else round(last_ok - applied, 3),
            "ok_after_first_blocked": sum(1 for t, ok in after
                                          if ok and first_blocked is not None and t > first_blocked),
            "probes_after_apply": len(after),
            "established_stream_last_line_after_apply_s":
                None if not stream else round(max(stream) - applied, 3),
            "window_s": window,
        }
    finally:
        core.delete_namespace(namespace, propagation_policy="Background")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_dataplane",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=8.0,
                        help="seconds to watch the traffic after the quarantine")
    args = parser.parse_args(argv)
    with LocalCluster.started(nodes=1) as cluster:
        if cluster.real_node is None:
            print(f"no real node: {cluster.real_node_failure or cluster.real_node_unavailable}",
                  file=sys.stderr)
            return 1
        ready = round(cluster.real_node.timings["node_ready_seconds"], 2)
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        core, kube = client.CoreV1Api(api), Kube(api)
        rounds = []
        for number in range(args.rounds):
            result = round_once(cluster, core, kube, args.window)
            print(f"round {number + 1}: {json.dumps(result)}", flush=True)
            rounds.append(result)
    blocked = [r["first_blocked_after_apply_s"] for r in rounds
               if r["first_blocked_after_apply_s"] is not None]
    stream = [r["established_stream_last_line_after_apply_s"] for r in rounds
              if r["established_stream_last_line_after_apply_s"] is not None]
    summary = {
        "rounds": len(rounds),
        "first_blocked_after_apply_s": {"min": min(blocked), "median": statistics.median(blocked),
                                        "max": max(blocked)} if blocked else None,
        "never_blocked_rounds": args.rounds - len(blocked),
        "established_stream_kept_flowing_rounds": sum(
            1 for s in stream if s >= args.window - 1.0),
        "node_ready_s": ready,
    }
    print(json.dumps(summary, indent=2))
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"dataplane-{stamp}.json"
    out.write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=2) + "\n")
    print(f"JSON: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
