"""An independent NetworkPolicy analyser agrees with the quarantine's judge.

cyclonus (built with the cluster's binaries) reads NetworkPolicies from a file and
answers, for concrete traffic, whether the policies allow it. For each namespace in
the table below, with the policies it had before the incident and the quarantine
policy as the operator builds it, we ask cyclonus about concrete flows to and from
the quarantined pod and hold ``firebreak.isolation.excess`` to its answers:

- before the exclusion, a pre-existing policy lets a flow beyond the allowances
  through (cyclonus) exactly when ``excess`` names that policy in that direction;
- after the operator's exclusion (``to_exclude`` and ``with_exclusion``, as the
  action applies them), cyclonus allows nothing but the declared allowances, and
  ``excess`` returns nothing.

No cluster is needed: the analyser reads files and never opens a connection.
"""

from __future__ import annotations

import copy
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firebreak.actions.network import IsolateNetworkParams, allowances, build_isolation_policy
from firebreak.isolation import (
    Direction,
    Finding,
    PodView,
    PolicySet,
    World,
    excess,
    quarantine_label,
    to_exclude,
    with_exclusion,
)
from tests.controlplane.binaries import built

CYCLONUS = built("cyclonus")
pytestmark = pytest.mark.skipif(
    CYCLONUS is None,
    reason="cyclonus is not built: `make controlplane` builds it with the cluster's binaries")

NS = "shop"
KEY = "miner"
OWN = f"firebreak-quarantine-{KEY}"
PARAMS = IsolateNetworkParams.model_validate({"forensicsNamespace": "forensics"})
QUARANTINE = build_isolation_policy(OWN, NS, KEY, PARAMS, {"app.kubernetes.io/managed-by": "firebreak"},
                                    incident_uid="3f0c9a52-6d0e-4c1b-9a57-1f2d8e4b7c11")

NAMESPACES = {
    NS: {"kubernetes.io/metadata.name": NS, "team": "shop"},
    "monitoring": {"kubernetes.io/metadata.name": "monitoring", "team": "ops"},
    "forensics": {"kubernetes.io/metadata.name": "forensics"},
    "kube-system": {"kubernetes.io/metadata.name": "kube-system"},
}


@dataclass(frozen=True)
class Pod:
    view: PodView
    ip: str


TARGET = Pod(PodView(NS, "api-1", {"app": "api", "tier": "back", quarantine_label(KEY): "true"},
                     named_ports={"http": ("TCP", 8080)}), "10.42.0.10")
CLIENT = Pod(PodView(NS, "web-1", {"app": "web", "tier": "front"}), "10.42.0.11")
PROMETHEUS = Pod(PodView("monitoring", "prometheus-0", {"app": "prometheus"}), "10.42.1.5")
KIT = Pod(PodView("forensics", "kit", {"app": "kit"}), "10.42.2.5")
COREDNS = Pod(PodView("kube-system", "coredns-1", {"k8s-app": "kube-dns"}, named_ports={
    "dns": ("UDP", 53), "dns-tcp": ("TCP", 53), "metrics": ("TCP", 9153)}), "10.42.3.10")
METRICS_SERVER = Pod(PodView("kube-system", "metrics-server-1", {"k8s-app": "metrics-server"}),
                     "10.42.3.11")
OUTSIDE = "203.0.113.7"
PODS = (TARGET, CLIENT, PROMETHEUS, KIT, COREDNS, METRICS_SERVER)
WORLD = World(namespaces=NAMESPACES,
              pods_in=lambda ns: [p.view for p in PODS if p.view.namespace == ns])


@dataclass(frozen=True)
class Flow:
    """Traffic to (ingress) or from (egress) the quarantined pod."""

    name: str
    direction: Direction
    peer: Pod | str  # a pod, or an address outside the cluster
    protocol: str
    port: int
    allowance: bool = False  # what the quarantine lets through on purpose


FLOWS = (
    Flow("client to the pod on its http port", "ingress", CLIENT, "TCP", 8080),
    Flow("monitoring scrapes the pod", "ingress", PROMETHEUS, "TCP", 9090),
    Flow("forensics reaches the pod", "ingress", KIT, "TCP", 22, allowance=True),
    Flow("pod to DNS over UDP", "egress", COREDNS, "UDP", 53, allowance=True),
    Flow("pod to DNS over TCP", "egress", COREDNS, "TCP", 53, allowance=True),
    Flow("pod to the DNS pod's metrics", "egress", COREDNS, "TCP", 9153),
    Flow("pod to another kube-system pod on 53", "egress", METRICS_SERVER, "UDP", 53),
    Flow("pod to the internet on 443", "egress", OUTSIDE, "TCP", 443),
)
ALLOWANCES = {f.name for f in FLOWS if f.allowance}


def policy(name: str, selector: dict[str, Any], types: list[str],
           ingress: list[dict[str, Any]] | None = None,
           egress: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": selector, "policyTypes": types}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NS, "resourceVersion": "1"}, "spec": spec}


def ns_is(name: str) -> dict[str, Any]:
    return {"matchLabels": {"kubernetes.io/metadata.name": name}}


ALLOW_ALL_INGRESS = policy("allow-all-ingress", {}, ["Ingress"], ingress=[{}])
TIERS = policy("back-from-front", {"matchLabels": {"tier": "back"}}, ["Ingress"], ingress=[{
    "from": [{"podSelector": {"matchLabels": {"tier": "front"}}}],
    "ports": [{"protocol": "TCP", "port": "http"}]}])
SCRAPE = policy("monitoring-scrape", {}, ["Ingress"], ingress=[{
    "from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}],
    "ports": [{"protocol": "TCP", "port": 9090}]}])
HTTPS_OUT = policy("https-out", {}, ["Egress"], egress=[{
    "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": 443}]}])
DNS_OUT = policy("dns", {}, ["Egress"], egress=[{
    "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}])
KUBE_SYSTEM_53 = policy("kube-system-53", {}, ["Egress"], egress=[{
    "to": [{"namespaceSelector": ns_is("kube-system")}],
    "ports": [{"protocol": "UDP", "port": 53}]}])
DNS_BY_NAME = policy("dns-by-name", {}, ["Egress"], egress=[{
    "to": [{"namespaceSelector": ns_is("kube-system"),
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
    "ports": [{"protocol": "UDP", "port": "dns"}]}])
DNS_PORT_RANGE = policy("dns-range", {}, ["Egress"], egress=[{
    "to": [{"namespaceSelector": ns_is("kube-system"),
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
    "ports": [{"protocol": "TCP", "port": 53, "endPort": 9153}]}])
ANYWHERE_53 = policy("anywhere-53", {}, ["Egress"], egress=[{"ports": [{"protocol": "UDP", "port": 53}]}])
FROM_POD_ADDRESSES = policy("from-pod-addresses", {}, ["Ingress"], ingress=[{
    "from": [{"ipBlock": {"cidr": "10.42.0.0/16"}}]}])
DEFAULT_DENY = policy("default-deny", {}, ["Ingress", "Egress"])

# The namespaces: the policies each had before the incident, and the flows beyond the
# allowances that those policies open to the quarantined pod.
NAMESPACE_TABLE = {
    "allow-all ingress": ([ALLOW_ALL_INGRESS],
                          {"client to the pod on its http port", "monitoring scrapes the pod"}),
    "tier rule on a named port": ([TIERS], {"client to the pod on its http port"}),
    "monitoring scrape by namespace": ([SCRAPE], {"monitoring scrapes the pod"}),
    "egress anywhere on 443": ([HTTPS_OUT], {"pod to the internet on 443"}),
    "DNS egress to DNS pods": ([DNS_OUT], set()),
    "DNS port to a whole namespace": ([KUBE_SYSTEM_53], {"pod to another kube-system pod on 53"}),
    "DNS by named port": ([DNS_BY_NAME], set()),
    "port range from 53": ([DNS_PORT_RANGE], {"pod to the DNS pod's metrics"}),
    "egress anywhere on 53": ([ANYWHERE_53], {"pod to another kube-system pod on 53"}),
    "ingress from the pods' addresses": ([FROM_POD_ADDRESSES],
                                         {"client to the pod on its http port",
                                          "monitoring scrapes the pod"}),
    "default deny": ([DEFAULT_DENY], set()),
    "all of them": ([DEFAULT_DENY, ALLOW_ALL_INGRESS, TIERS, SCRAPE, HTTPS_OUT, DNS_OUT,
                     KUBE_SYSTEM_53],
                    {"client to the pod on its http port", "monitoring scrapes the pod",
                     "pod to the internet on 443", "pod to another kube-system pod on 53"}),
}


# --- asking cyclonus -------------------------------------------------------------------------


def _peer(pod: Pod | str) -> dict[str, Any]:
    if isinstance(pod, str):
        return {"IP": pod}
    return {"IP": pod.ip, "Internal": {"Namespace": pod.view.namespace,
                                       "NamespaceLabels": NAMESPACES[pod.view.namespace],
                                       "PodLabels": dict(pod.view.labels)}}


def _traffic(flow: Flow) -> dict[str, Any]:
    source, destination = ((flow.peer, TARGET) if flow.direction == "ingress"
                           else (TARGET, flow.peer))
    port_name = "" if isinstance(destination, str) else next(
        (name for name, (protocol, number) in destination.view.named_ports.items()
         if (protocol, number) == (flow.protocol, flow.port)), "")
    return {"Source": _peer(source),
            "Destination": _peer(destination),
            "Protocol": flow.protocol, "ResolvedPort": flow.port, "ResolvedPortName": port_name}


def _verdicts(output: str) -> list[dict[str, bool]]:
    """Per traffic, in order: whether its ingress and its egress are allowed.

    cyclonus prints, per traffic, a table of the targets (policies by pod selector)
    that allow and that deny it in each direction, and a footer with the verdict. A
    direction is allowed when some target allows it or none applies."""
    verdicts = []
    lines = iter(output.splitlines())
    for line in lines:
        if line.strip() != "Is traffic allowed?":
            continue
        seen: set[tuple[str, str]] = set()
        direction = ""
        for row in lines:
            cells = [c.strip() for c in row.strip().strip("|").split("|")]
            if row.startswith("+") or cells[0] == "TYPE":
                continue
            if cells[0] == "IS ALLOWED?":
                footer = {"TRUE": True, "FALSE": False}[cells[1]]
                break
            if not any(cells):
                direction = ""  # the blank row between ingress and egress
                continue
            direction = cells[0] or direction
            if cells[1]:
                seen.add((direction, cells[1]))
        verdict = {d: (d.capitalize(), "Allow") in seen or (d.capitalize(), "Deny") not in seen
                   for d in ("ingress", "egress")}
        assert footer == (verdict["ingress"] and verdict["egress"]), output
        verdicts.append(verdict)
    return verdicts


def cyclonus_allows(policies: list[dict[str, Any]], tmp_path: Path) -> set[str]:
    """The flows (by name) cyclonus finds allowed, each judged on the quarantined pod's
    side: its ingress for traffic to it, its egress for traffic from it."""
    assert CYCLONUS is not None
    policy_file, traffic_file = tmp_path / "policies.json", tmp_path / "traffic.json"
    policy_file.write_text(json.dumps({"apiVersion": "networking.k8s.io/v1",
                                       "kind": "NetworkPolicyList", "items": policies}))
    traffic_file.write_text(json.dumps([_traffic(f) for f in FLOWS]))
    result = subprocess.run(
        [str(CYCLONUS), "analyze", "--mode", "query-traffic",
         "--policy-path", str(policy_file), "--traffic-path", str(traffic_file)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    verdicts = _verdicts(result.stdout)
    assert len(verdicts) == len(FLOWS), result.stdout
    return {f.name for f, v in zip(FLOWS, verdicts, strict=True) if v[f.direction]}


# --- the judge, and the exclusion as the operator makes it -----------------------------------


def judge(policies: list[dict[str, Any]]) -> list[Finding]:
    return excess(TARGET.view, policies, OWN, allowances(PARAMS), WORLD)


def excluded(policies: list[dict[str, Any]], findings: list[Finding]) -> list[dict[str, Any]]:
    """The policies after the operator's exclusion: the selector of each policy
    ``to_exclude`` names replaced by ``with_exclusion`` of it, nothing else changed."""
    names = to_exclude(findings, PolicySet(policies), OWN)
    result = []
    for p in policies:
        if p["metadata"]["name"] in names:
            p = copy.deepcopy(p)
            p["spec"]["podSelector"] = with_exclusion(p["spec"].get("podSelector") or {}, KEY)
        result.append(p)
    return result


def directions(flows: set[str]) -> set[str]:
    return {f.direction for f in FLOWS if f.name in flows}


@pytest.mark.parametrize("others,holes", NAMESPACE_TABLE.values(), ids=NAMESPACE_TABLE.keys())
def test_analyser_and_judge_agree(others: list[dict[str, Any]], holes: set[str],
                                  tmp_path: Path) -> None:
    before = [QUARANTINE, *others]
    findings = judge(before)

    # Before the exclusion: cyclonus lets through the allowances and the holes ...
    assert cyclonus_allows(before, tmp_path) == ALLOWANCES | holes
    # ... and the judge finds a hole in each direction cyclonus does ...
    assert {f.direction for f in findings} == directions(holes)
    # ... naming exactly the policies that, beside the quarantine, open a flow.
    opening = {p["metadata"]["name"] for p in others
               if cyclonus_allows([QUARANTINE, p], tmp_path) - ALLOWANCES}
    assert {f.policy for f in findings} == opening
    assert all(f.policy is not None for f in findings)

    # After it: only the allowances, by both.
    after = excluded(before, findings)
    assert judge(after) == []
    assert cyclonus_allows(after, tmp_path) == ALLOWANCES


def test_the_quarantine_alone_allows_only_its_allowances(tmp_path: Path) -> None:
    assert judge([QUARANTINE]) == []
    assert cyclonus_allows([QUARANTINE], tmp_path) == ALLOWANCES


def test_a_policy_that_does_not_select_the_pod_is_judged_alike(tmp_path: Path) -> None:
    """A pre-existing policy for other pods opens nothing to the quarantined one."""
    web_only = policy("web-open", {"matchLabels": {"app": "web"}}, ["Ingress", "Egress"],
                      ingress=[{}], egress=[{}])
    assert judge([QUARANTINE, web_only]) == []
    assert cyclonus_allows([QUARANTINE, web_only], tmp_path) == ALLOWANCES


def test_without_the_quarantine_both_see_the_pod_open(tmp_path: Path) -> None:
    """The cross-check can fail: with no quarantine policy selecting the pod, cyclonus
    lets every flow through and the judge says so in both directions."""
    assert cyclonus_allows([], tmp_path) == {f.name for f in FLOWS}
    assert {(f.direction, f.policy) for f in judge([])} == {("ingress", None), ("egress", None)}
