"""The operator's quarantine, proven with packets on the real node.

A playbook's ``isolateNetwork`` step, run by ``firebreak run``, must cut the target
off in both directions while keeping its declared allowances (ingress from the
forensics namespace, DNS on port 53 to pods labelled like the cluster DNS), and its
revert must open the traffic again. Every assertion here is a request sent from
inside a pod: refused or timed out is blocked, a page is open.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from tests.controlplane import LocalCluster, RealNode
from tests.e2e.conftest import OPERATOR_NS, OperatorProcess, incident_status, wait_phase
from tests.helpers import (
    GROUP,
    VERSION,
    create_incident,
    create_playbook,
    fetch,
    start_pods,
    wait_for,
    web_pod,
)

pytestmark = pytest.mark.cluster
DNS_PORT = 53


@pytest.fixture
def forensics(core: client.CoreV1Api) -> Iterator[str]:
    name = f"forensics-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(lambda: core.list_namespaced_service_account(name).items,
             what=f"the default ServiceAccount in {name}")
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def cluster_dns(core: client.CoreV1Api) -> Iterator[str]:
    """A stand-in for the cluster DNS: labelled like it, in kube-system, listening on
    TCP port 53 (with busybox httpd, so a request proves the port is reachable)."""
    name = f"dns-{uuid.uuid4().hex[:8]}"
    ip = start_pods(core, "kube-system", web_pod(name, {"k8s-app": "kube-dns"}, DNS_PORT))[name]
    yield ip
    core.delete_namespaced_pod(name, "kube-system", grace_period_seconds=0)


@pytest.fixture
def playbook(custom: client.CustomObjectsApi, namespace: str, forensics: str) -> Iterator[str]:
    name = f"quarantine-{namespace}"
    create_playbook(custom, name, {
        "match": {"namespaces": [namespace]},
        "steps": [{"name": "isolate", "action": "isolateNetwork",
                   "params": {"scope": "pod", "forensicsNamespace": forensics}}],
    })
    yield name
    custom.delete_namespaced_custom_object(GROUP, VERSION, OPERATOR_NS, "responseplaybooks", name)


def test_quarantine_cuts_traffic_both_ways_keeps_allowances_and_revert_restores_it(
    real_node: RealNode, cluster: LocalCluster, start_operator: Callable[..., OperatorProcess],
    playbook: str, forensics: str, cluster_dns: str, custom: client.CustomObjectsApi,
    core: client.CoreV1Api, namespace: str,
) -> None:
    ips = start_pods(core, namespace, web_pod("web"), web_pod("client"))
    investigator = start_pods(core, forensics, web_pod("investigator"))["investigator"]

    def get(source_namespace: str, source: str, ip: str, port: int = 8080) -> str | None:
        return fetch(cluster.kubectl, source_namespace, source, ip, port)

    def flows() -> dict[str, bool]:
        return {
            "client -> web": get(namespace, "client", ips["web"]) is not None,
            "web -> client": get(namespace, "web", ips["client"]) is not None,
            "forensics -> web": get(forensics, "investigator", ips["web"]) is not None,
            "web -> forensics": get(namespace, "web", investigator) is not None,
            "web -> dns:53": get(namespace, "web", cluster_dns, DNS_PORT) is not None,
        }

    before = flows()
    assert all(before.values()), f"every flow works before the incident: {before}"

    op = start_operator()
    create_incident(custom, namespace, "miner", {"kind": "Pod", "namespace": namespace,
                                                 "name": "web"})
    wait_phase(custom, namespace, "miner", "Contained", op)

    quarantined = {"client -> web": False, "web -> client": False, "forensics -> web": True,
                   "web -> forensics": False, "web -> dns:53": True}
    wait_for(lambda: flows() == quarantined, timeout=15,
             what=f"the quarantine to hold: {quarantined}")
    # The client itself is not quarantined: it still reaches the forensics pod.
    assert get(namespace, "client", investigator) is not None

    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents", "miner",
                                          {"spec": {"resolution": {"reason": "contained",
                                                                   "by": "alice"}}})
    wait_phase(custom, namespace, "miner", "Resolved", op)
    wait_for(lambda: all(flows().values()), timeout=15, what="every flow to work again")


def _allow(networking: client.NetworkingV1Api, namespace: str, name: str,
           spec: dict[str, object]) -> None:
    networking.create_namespaced_network_policy(namespace, {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name}, "spec": spec})


def test_other_allow_policies_do_not_open_the_quarantine_and_revert_reopens_everything(
    real_node: RealNode, cluster: LocalCluster, start_operator: Callable[..., OperatorProcess],
    playbook: str, forensics: str, custom: client.CustomObjectsApi, core: client.CoreV1Api,
    api_client: client.ApiClient, namespace: str,
) -> None:
    networking = client.NetworkingV1Api(api_client)
    # What real namespaces carry: an allow-all-ingress policy on a legacy app, a tier
    # rule letting the client in, and an egress rule from the target to the client.
    _allow(networking, namespace, "legacy-allow-all", {
        "podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
        "ingress": [{}]})
    _allow(networking, namespace, "client-to-web", {
        "podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]})
    _allow(networking, namespace, "web-egress", {
        "podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {}}]}]})
    ips = start_pods(core, namespace, web_pod("web"), web_pod("client"))
    investigator = start_pods(core, forensics, web_pod("investigator"))["investigator"]

    def flows() -> dict[str, bool]:
        def ok(source_ns: str, source: str, ip: str) -> bool:
            return fetch(cluster.kubectl, source_ns, source, ip) is not None
        return {"client -> web": ok(namespace, "client", ips["web"]),
                "web -> client": ok(namespace, "web", ips["client"]),
                "forensics -> web": ok(forensics, "investigator", ips["web"]),
                "web -> forensics": ok(namespace, "web", investigator)}

    before = flows()
    assert all(before.values()), before

    op = start_operator()
    create_incident(custom, namespace, "miner", {"kind": "Pod", "namespace": namespace,
                                                 "name": "web"})
    status = wait_phase(custom, namespace, "miner", "Contained", op)
    isolated = next(c for c in status["conditions"] if c["type"] == "Isolated")
    assert isolated["status"] == "True", isolated

    quarantined = {"client -> web": False, "web -> client": False, "forensics -> web": True,
                   "web -> forensics": False}
    wait_for(lambda: flows() == quarantined, timeout=15, what=f"the quarantine: {quarantined}")

    # A new allow policy after containment is answered within seconds.
    _allow(networking, namespace, "late-allow-all", {
        "podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{}], "egress": [{}]})
    wait_for(lambda: any(t["reason"] == "QuarantineRestored" and "late-allow-all" in t["message"]
                         for t in incident_timeline(custom, namespace, "miner")),
             timeout=15, what="the late policy to be excluded")
    assert flows() == quarantined

    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents", "miner",
                                          {"spec": {"resolution": {"reason": "contained",
                                                                   "by": "alice"}}})
    wait_phase(custom, namespace, "miner", "Resolved", op)
    wait_for(lambda: all(flows().values()), timeout=15, what="every flow to work again")
    left = {p.metadata.name: p.spec.pod_selector.match_expressions
            for p in networking.list_namespaced_network_policy(namespace).items}
    assert left == dict.fromkeys(
        ["client-to-web", "late-allow-all", "legacy-allow-all", "web-egress"]), \
        "no exclusion term is left in any policy"


def incident_timeline(custom: client.CustomObjectsApi, namespace: str, name: str
                      ) -> list[dict[str, str]]:
    status = incident_status(custom, namespace, name)
    return list(status.get("timeline") or [])  # type: ignore[call-overload]
