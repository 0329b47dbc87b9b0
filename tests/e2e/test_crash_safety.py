"""SIGKILL the operator while incidents are halfway through their playbooks.

A watch on the incidents kills the process the moment one of them has applied a
step but not yet the next. After a restart every incident finishes, and nothing
was applied twice: one NetworkPolicy and one evidence bundle per incident, and
every scale-down remembers the replica count from before the first attempt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client, watch

from tests.e2e.conftest import OperatorProcess, wait_phase
from tests.helpers import (
    GROUP,
    OPERATOR_NS,
    VERSION,
    create_incident,
    create_playbook,
    deployment,
    running_pods,
    wait_for,
)

pytestmark = pytest.mark.cluster

INCIDENTS = 8
ROUNDS = 3


def halfway(obj: dict[str, Any]) -> bool:
    states = [a["state"] for a in (obj.get("status") or {}).get("actions") or []]
    return "Applied" in states and any(s in ("Pending", "Running") for s in states)


def kill_when_halfway(custom: client.CustomObjectsApi, namespace: str, op: OperatorProcess,
                      caught: list[dict[str, Any]], stop: threading.Event) -> None:
    w = watch.Watch()
    for event in w.stream(custom.list_namespaced_custom_object, GROUP, VERSION, namespace,
                          "securityincidents", timeout_seconds=60):
        if stop.is_set():
            break
        if halfway(event["object"]):
            op.kill()
            caught.append(event["object"])
            break
    w.stop()


def test_sigkill_between_steps_applies_nothing_twice(
    start_operator: Callable[..., OperatorProcess], custom: client.CustomObjectsApi,
    core: client.CoreV1Api, apps: client.AppsV1Api, api_client: client.ApiClient,
    namespace: str,
) -> None:
    create_playbook(custom, "crash", {"steps": [
        {"name": "isolate", "action": "isolateNetwork"},
        {"name": "evidence", "action": "snapshot", "params": {"storage": "configMap"}},
        {"name": "mark", "action": "label", "params": {"labels": {"flagged": "yes"}}},
        {"name": "stop", "action": "scaleDown", "params": {"replicas": 1}},
    ]}, namespace=namespace)
    names = [f"app{i}" for i in range(INCIDENTS)]
    for name in names:
        apps.create_namespaced_deployment(namespace, deployment(name, 2))
    victims = {name: wait_for(lambda n=name: running_pods(core, namespace, n), timeout=90,
                              what=f"pods of {name}")[0].metadata.name for name in names}

    caught: list[dict[str, Any]] = []
    op = start_operator()
    for round_ in range(ROUNDS):
        stop = threading.Event()
        watcher = threading.Thread(target=kill_when_halfway,
                                   args=(custom, namespace, op, caught, stop))
        watcher.start()
        if round_ == 0:
            for name in names:
                create_incident(custom, namespace, name,
                                {"kind": "Pod", "namespace": namespace, "name": victims[name]})
        watcher.join(timeout=60)
        stop.set()
        if op.alive():
            break  # every incident finished before the watch saw one halfway
        op = start_operator()

    assert caught, "the operator was never caught between two steps"
    for name in names:
        status = wait_phase(custom, namespace, name, "Contained", op, timeout=120)
        assert [a["state"] for a in status["actions"]] == ["Applied"] * 4, status
        assert status["actions"][3]["revert"]["previousReplicas"] == 2, status

    policies = client.NetworkingV1Api(api_client).list_namespaced_network_policy(namespace).items
    assert sorted(p.metadata.name for p in policies) == sorted(
        f"firebreak-quarantine-{n}" for n in names)
    # Evidence is kept in the operator's namespace, labelled with the incident's.
    evidence = core.list_namespaced_config_map(
        OPERATOR_NS, label_selector=f"firebreak.dev/evidence=true,"
                                    f"firebreak.dev/incident-namespace={namespace}").items
    for name in names:
        bundle = [c.metadata.name for c in evidence
                  if c.metadata.labels.get("firebreak.dev/incident") == name]
        assert bundle and all(n.startswith(f"firebreak-evidence-{namespace}-{name}-evidence-")
                              for n in bundle)
        assert len(bundle) == len(set(bundle))
        assert apps.read_namespaced_deployment_scale(name, namespace).spec.replicas == 1
