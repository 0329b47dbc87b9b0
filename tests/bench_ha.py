"""`make bench`, the high-availability part: throughput with two replicas, and how
long incidents wait when the acting replica dies or stops.

Method, on the local control plane (kwok nodes), two ``firebreak run`` processes
with the default Lease (FIREBREAK_LEASE_SECONDS, 15 s) and no flood budget:
- throughput: one Deployment per alert; every alert is sent to both replicas (as a
  Service spreading Alertmanager's retries would), and the clock runs from the first
  send until every incident is Contained (isolateNetwork, scope workload);
- failover: the replica holding the Lease is SIGKILLed, and at once an alert about a
  new workload goes to the survivor; measured are kill -> Lease taken and kill ->
  that incident Contained. The killed replica is restarted before the next round;
- handover: the same with SIGTERM, the way a rollout stops a pod (the Lease is given
  up, not waited out).

    python -m tests.bench_ha [--incidents 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config

from tests.controlplane import LocalCluster
from tests.helpers import GROUP, OPERATOR_NS, VERSION, deployment, wait_for
from tests.replicas import Replicas, alert, holder, post, ready

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench-results"
NAMESPACE = "bench-ha"


def contained(custom: client.CustomObjectsApi) -> dict[str, dict[str, Any]]:
    """Contained incidents by their target's name."""
    items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE,
                                                 "securityincidents")["items"]
    return {i["spec"]["target"]["name"]: i for i in items
            if (i.get("status") or {}).get("phase") == "Contained"}


def install(cluster: LocalCluster, custom: client.CustomObjectsApi) -> None:
    cluster.kubectl("apply", "-k", str(REPO / "crds"))
    cluster.wait_established("securityincidents.firebreak.dev", "responseplaybooks.firebreak.dev")
    cluster.kubectl("apply", "-f", str(REPO / "manifests" / "namespace.yaml"))
    cluster.kubectl("create", "namespace", NAMESPACE)
    custom.create_namespaced_custom_object(GROUP, VERSION, OPERATOR_NS, "responseplaybooks", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ResponsePlaybook",
        "metadata": {"name": "bench-ha"},
        "spec": {"match": {"namespaces": [NAMESPACE]}, "steps": [
            {"name": "isolate", "action": "isolateNetwork", "params": {"scope": "workload"}}]}})


def throughput(replicas: Replicas, custom: client.CustomObjectsApi, count: int) -> dict[str, Any]:
    names = [f"burst{i}" for i in range(count)]
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(
            lambda name: [post(port, alert(NAMESPACE, name)) for port in replicas.ports], names))
    sent = time.monotonic() - began
    done = wait_for(lambda: (found := contained(custom)) and all(n in found for n in names)
                    and found, timeout=600, interval=0.2, what=f"{count} incidents contained")
    elapsed = time.monotonic() - began
    to_contain = sorted(done[n]["status"]["timeToContainSeconds"] for n in names)
    return {
        "incidents": count, "replicas": len(replicas.procs),
        "alerts_sent_to_every_replica": True,
        "all_sent_s": round(sent, 2), "all_contained_s": round(elapsed, 2),
        "incidents_per_s": round(count / elapsed, 1),
        "time_to_contain_s": {"p50": round(statistics.median(to_contain), 3),
                              "max": round(to_contain[-1], 3)},
        "answers_not_200": sum(1 for codes in answers for c in codes if c != 200),
    }


def lose_the_leader(replicas: Replicas, custom: client.CustomObjectsApi,
                    coordination: client.CoordinationV1Api, app: str, kill: bool
                    ) -> dict[str, float]:
    acting = wait_for(lambda: holder(coordination), timeout=120, what="a leader")
    victim = next(p for p in replicas.procs if acting.startswith(p.env["POD_NAME"] + "-"))
    survivor = next(port for proc, port in zip(replicas.procs, replicas.ports, strict=True)
                    if proc is not victim)
    began = time.monotonic()
    if kill:
        victim.kill()
    else:
        victim.stop()
    stopped = time.monotonic() - began
    answer = post(survivor, alert(NAMESPACE, app))
    assert answer == 200, answer
    wait_for(lambda: (holder(coordination) or acting) != acting, timeout=120, interval=0.05,
             what="another replica to take the Lease")
    taken = time.monotonic() - began
    wait_for(lambda: app in contained(custom), timeout=120, interval=0.1,
             what=f"the incident about {app} contained")
    done = time.monotonic() - began
    victim.start()
    port = replicas.ports[replicas.procs.index(victim)]
    wait_for(lambda: ready(port), timeout=120, what="the restarted replica")
    return {"stop_s": round(stopped, 2), "lease_taken_s": round(taken, 2),
            "incident_contained_s": round(done, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_ha",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--incidents", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lease-seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    with LocalCluster.started(nodes=3, real_node=False) as cluster, \
            tempfile.TemporaryDirectory(prefix="firebreak-bench-ha-") as workdir:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
        coordination = client.CoordinationV1Api(api)
        install(cluster, custom)
        names = ([f"burst{i}" for i in range(args.incidents)]
                 + [f"{kind}{i}" for kind in ("kill", "term") for i in range(args.rounds)])
        for name in names:
            apps.create_namespaced_deployment(NAMESPACE, deployment(name, 1))
        wait_for(lambda: all((apps.read_namespaced_deployment(n, NAMESPACE).status
                              .ready_replicas or 0) >= 1 for n in names),
                 timeout=600, interval=1.0, what="every target's pod Running")
        replicas = Replicas(cluster.kubeconfig, Path(workdir), 2, args.lease_seconds,
                            "--budget-per-minute=0")
        replicas.start()
        try:
            for port in replicas.ports:
                wait_for(lambda port=port: ready(port), timeout=120, what="both webhooks")
            wait_for(lambda: holder(coordination), timeout=120, what="a leader")
            burst = throughput(replicas, custom, args.incidents)
            print(f"throughput: {json.dumps(burst)}", flush=True)
            kills = [lose_the_leader(replicas, custom, coordination, f"kill{i}", kill=True)
                     for i in range(args.rounds)]
            print(f"SIGKILL: {json.dumps(kills)}", flush=True)
            terms = [lose_the_leader(replicas, custom, coordination, f"term{i}", kill=False)
                     for i in range(args.rounds)]
            print(f"SIGTERM: {json.dumps(terms)}", flush=True)
        except AssertionError:
            print(replicas.logs(), file=sys.stderr)
            raise
        finally:
            replicas.stop()

    def summary(rounds: list[dict[str, float]]) -> dict[str, float]:
        return {key: max(r[key] for r in rounds) for key in ("lease_taken_s",
                                                             "incident_contained_s")}

    results = {"lease_seconds": args.lease_seconds, "throughput": burst,
               "failover_sigkill": {"max": summary(kills), "rounds": kills},
               "handover_sigterm": {"max": summary(terms), "rounds": terms}}
    print(json.dumps(results, indent=2))
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"ha-{stamp}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"JSON: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
