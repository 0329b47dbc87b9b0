"""Several replicas of ``firebreak run`` against one cluster: the same alerts sent to
every one, the acting replica SIGKILLed again and again, then every incident resolved.

What is counted is what reached the API server (its audit log of the operator's
writes), not only what the incidents' status says: each quarantine policy created
once and deleted once, each Deployment's spec changed exactly twice (scaled down,
then restored), and every alert accepted by some replica while one was alive.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.controlplane import LocalCluster
from tests.helpers import GROUP, VERSION, create_playbook, deployment, wait_for
from tests.replicas import Replicas, alert, holder, post, ready

pytestmark = pytest.mark.cluster

LEASE_SECONDS = 3
APP_REPLICAS = 2


@pytest.fixture
def replicas(operator_kubeconfig: Path, tmp_path: Path,
             request: pytest.FixtureRequest) -> Iterator[Replicas]:
    made = Replicas(operator_kubeconfig, tmp_path, request.param, lease_seconds=LEASE_SECONDS)
    yield made
    made.stop()


def writes(cluster: LocalCluster, namespace: str, verb: str, resource: str,
           subresource: str | None = None) -> Counter[str]:
    """Successful writes by the operator in a namespace, by object name, from the
    audit log."""
    counted: Counter[str] = Counter()
    for event in cluster.audit():
        ref = event.get("objectRef") or {}
        if event.get("verb") == verb and ref.get("resource") == resource \
                and ref.get("namespace") == namespace and ref.get("subresource") == subresource \
                and int((event.get("responseStatus") or {}).get("code", 0)) < 300:
            counted[ref.get("name", "")] += 1
    return counted


def incidents(custom: client.CustomObjectsApi, namespace: str) -> list[dict[str, Any]]:
    found = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents")
    return list(found["items"])


@pytest.mark.timeout(1200)
@pytest.mark.parametrize(("replicas", "count", "kills"), [(2, 20, 0), (3, 100, 10)],
                         indirect=["replicas"], ids=["two-replicas", "three-replicas-ten-kills"])
def test_every_step_is_applied_once_whichever_replica_acts(
        replicas: Replicas, count: int, kills: int, cluster: LocalCluster,
        custom: client.CustomObjectsApi, apps: client.AppsV1Api, api_client: client.ApiClient,
        namespace: str) -> None:
    coordination = client.CoordinationV1Api(api_client)
    create_playbook(custom, "ha", {"steps": [
        {"name": "isolate", "action": "isolateNetwork", "params": {"scope": "workload"}},
        {"name": "stop", "action": "scaleDown", "params": {"replicas": 0}},
    ]}, namespace=namespace)
    names = [f"app{i}" for i in range(count)]
    for name in names:
        apps.create_namespaced_deployment(namespace, deployment(name, APP_REPLICAS))
    replicas.start()
    wait_for(lambda: holder(coordination), timeout=60, what="a replica to take the lease")
    for port in replicas.ports:
        wait_for(lambda port=port: ready(port), timeout=120, what="every replica's webhook")

    answers: dict[str, list[int | str]] = {}
    failovers: list[float] = []
    problems: list[BaseException] = []

    def send() -> None:
        for name in names:
            body = alert(namespace, name)
            answers[name] = [post(port, body) for port in replicas.ports]
            time.sleep(0.25)

    def kill_the_acting_one() -> None:
        for _ in range(kills):
            acting = wait_for(lambda: holder(coordination), timeout=60, what="a leader")
            time.sleep(random.uniform(0.3, 1.5))
            victim = next(p for p in replicas.procs
                          if acting.startswith(p.env["POD_NAME"] + "-"))
            victim.kill()
            killed_at = time.monotonic()
            wait_for(lambda was=acting: (holder(coordination) or was) != was, timeout=60,
                     what="another replica to take over")
            failovers.append(time.monotonic() - killed_at)
            victim.start()
            # As a Deployment would: the replacement is up before the next loss.
            port = replicas.ports[replicas.procs.index(victim)]
            wait_for(lambda up=port: ready(up), timeout=120, what="the restarted replica's webhook")

    def noting_problems(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as exc:
                problems.append(exc)
        return run

    sender = threading.Thread(target=noting_problems(send))
    killer = threading.Thread(target=noting_problems(kill_the_acting_one))
    sender.start()
    killer.start()
    sender.join(timeout=300)
    killer.join(timeout=300)
    assert not problems, problems
    assert len(answers) == count and len(failovers) == kills
    # Every alert was accepted by a replica that was up, and none answered 5xx.
    for name, codes in answers.items():
        assert 200 in codes, (name, codes)
        assert not [c for c in codes if isinstance(c, int) and c >= 500], (name, codes)

    def all_in(phase: str) -> list[dict[str, Any]] | None:
        found = incidents(custom, namespace)
        return found if len(found) == count and all(
            (i.get("status") or {}).get("phase") == phase for i in found) else None

    try:
        contained = wait_for(lambda: all_in("Contained"), timeout=240,
                             what=f"{count} incidents contained")
    except AssertionError:
        print(replicas.logs())
        raise
    for item in contained:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "securityincidents", item["metadata"]["name"],
            {"spec": {"resolution": {"reason": "contained and cleaned", "by": "tester"}}})
    try:
        resolved = wait_for(lambda: all_in("Resolved"), timeout=240,
                            what=f"{count} incidents resolved")
    except AssertionError:
        print(replicas.logs())
        raise

    # One incident per alert however many replicas got it.
    assert sorted(i["spec"]["target"]["name"] for i in resolved) == sorted(names)
    # The API server saw each quarantine created once and deleted once...
    policies = {f"firebreak-quarantine-{i['metadata']['name']}" for i in resolved}
    created = writes(cluster, namespace, "create", "networkpolicies")
    deleted = writes(cluster, namespace, "delete", "networkpolicies")
    assert {p: created[p] for p in policies} == dict.fromkeys(policies, 1)
    assert {p: deleted[p] for p in policies} == dict.fromkeys(policies, 1)
    # ...each Deployment's spec changed exactly twice (down, then back), and every
    # scale-down recorded the count from before the first and only one.
    for name in names:
        dep = apps.read_namespaced_deployment(name, namespace)
        assert (dep.spec.replicas, dep.metadata.generation) == (APP_REPLICAS, 3), name
    for item in resolved:
        (stop,) = [a for a in item["status"]["actions"] if a["step"] == "stop"]
        assert stop["revert"]["previousReplicas"] == APP_REPLICAS
        assert stop["state"] == "Reverted"
    print(f"\n{len(replicas.procs)} replicas, {count} incidents, {kills} kills; failover "
          f"(kill -> Lease taken) max {max(failovers, default=0):.1f}s, "
          f"mean {sum(failovers) / max(len(failovers), 1):.1f}s")
    if kills == 0:
        # With nobody killed, one replica did every action: the others only took alerts.
        agents = {e.get("userAgent") for e in cluster.audit()
                  if (e.get("objectRef") or {}).get("resource") == "networkpolicies"
                  and (e.get("objectRef") or {}).get("namespace") == namespace}
        assert len(agents) == 1, agents
