"""The quarantine's judge: which flows the NetworkPolicies selecting a quarantined pod
allow beyond its allowances, and the exclusion term that takes the pod out of
another policy."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from firebreak.isolation import (
    Allowances,
    PodView,
    PolicySet,
    World,
    adds_nothing,
    excess,
    exclusion_term,
    has_exclusion,
    is_allowance,
    is_quarantine_policy,
    judged_within,
    quarantine_label,
    to_exclude,
    with_exclusion,
    without_exclusion,
)
from firebreak.selectors import selects

NS = "shop"
KEY = "miner"
OWN = "firebreak-quarantine-miner"
TARGET = PodView(NS, "web-1", {"app": "web", "tier": "front", quarantine_label(KEY): "true"},
                 named_ports={"http": ("TCP", 8080)})
DNS_POD = PodView("kube-system", "coredns-1", {"k8s-app": "kube-dns"},
                  named_ports={"dns": ("UDP", 53), "dns-tcp": ("TCP", 53), "metrics": ("TCP", 9153)})
OTHER_KS_POD = PodView("kube-system", "metrics-server", {"k8s-app": "metrics-server"})
WORLD = World(
    namespaces={NS: {"kubernetes.io/metadata.name": NS, "team": "shop"},
                "forensics": {"kubernetes.io/metadata.name": "forensics"},
                "kube-system": {"kubernetes.io/metadata.name": "kube-system"},
                "monitoring": {"kubernetes.io/metadata.name": "monitoring", "team": "ops"},
                "empty": {"kubernetes.io/metadata.name": "empty"}},
    pods_in=lambda ns: {
        NS: [TARGET, PodView(NS, "db-1", {"app": "db"})],
        "kube-system": [DNS_POD, OTHER_KS_POD],
        "monitoring": [PodView("monitoring", "prometheus-0", {"app": "prometheus"})],
        "forensics": [PodView("forensics", "kit", {"app": "kit"})],
    }.get(ns, []),
)
ALLOW = Allowances(forensics_namespace="forensics", dns_namespace="kube-system",
                   dns_selector={"k8s-app": "kube-dns"})
DNS_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


def policy(name: str, selector: dict[str, Any] | None = None, *, types: list[str] | None = None,
           ingress: list[dict[str, Any]] | None = None, egress: list[dict[str, Any]] | None = None,
           namespace: str = NS) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": selector if selector is not None else {}}
    if types is not None:
        spec["policyTypes"] = types
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


OWN_POLICY = policy(OWN, {"matchLabels": {quarantine_label(KEY): "true"}},
                    types=["Ingress", "Egress"],
                    ingress=[{"from": [{"namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": "forensics"}}}]}],
                    egress=[{"to": [DNS_PEER], "ports": DNS_PORTS}])


def flows(*others: dict[str, Any], pod: PodView = TARGET, allow: Allowances = ALLOW
          ) -> list[tuple[str, str | None]]:
    return [(f.direction, f.policy) for f in excess(pod, [OWN_POLICY, *others], OWN, allow, WORLD)]


def test_the_quarantine_alone_holds() -> None:
    assert flows() == []


def test_a_pod_the_quarantine_policy_does_not_select_is_open_both_ways() -> None:
    unlabelled = PodView(NS, "web-1", {"app": "web"})
    found = excess(unlabelled, [OWN_POLICY], OWN, ALLOW, WORLD)
    assert [(f.direction, f.policy) for f in found] == [("ingress", None), ("egress", None)]
    assert "does not select the pod" in str(found[0])


def test_a_host_network_pod_cannot_be_isolated() -> None:
    host = PodView(NS, "web-1", TARGET.labels, host_network=True)
    found = excess(host, [OWN_POLICY], OWN, ALLOW, WORLD)
    assert len(found) == 2 and all("host's network" in str(f) for f in found)


@pytest.mark.parametrize(("other", "expected"), [
    # allow-all ingress on the namespace: the classic legacy policy
    (policy("allow-all", {}, types=["Ingress"], ingress=[{}]), [("ingress", "allow-all")]),
    # a default deny allows nothing: no finding, nothing to exclude
    (policy("default-deny", {}, types=["Ingress", "Egress"]), []),
    # Ingress-only policy with egress rules is not an egress policy
    (policy("ingress-only", {}, types=["Ingress"], egress=[{}]), []),
    # policyTypes absent: Egress counts only when the policy has an egress section
    (policy("implicit-egress", {}, egress=[{}]), [("egress", "implicit-egress")]),
    (policy("implicit-ingress", {}, ingress=[{}]), [("ingress", "implicit-ingress")]),
    # tier rule: front may be reached by every pod of the namespace
    (policy("front", {"matchLabels": {"tier": "front"}}, types=["Ingress"],
            ingress=[{"from": [{"podSelector": {}}]}]), [("ingress", "front")]),
    # a rule that selects other pods does not apply to the target
    (policy("db", {"matchLabels": {"app": "db"}}, types=["Ingress"], ingress=[{}]), []),
    # matchExpressions In / NotIn deciding whether the target is selected
    (policy("expr-in", {"matchExpressions": [{"key": "app", "operator": "In",
                                              "values": ["web", "api"]}]},
            types=["Ingress"], ingress=[{}]), [("ingress", "expr-in")]),
    (policy("expr-notin", {"matchExpressions": [{"key": "app", "operator": "NotIn",
                                                 "values": ["web"]}]},
            types=["Ingress"], ingress=[{}]), []),
    # monitoring scrape: namespaceSelector alone opens to every pod of those namespaces
    (policy("scrape", {}, types=["Ingress"], ingress=[{"from": [{"namespaceSelector": {
        "matchLabels": {"team": "ops"}}}], "ports": [{"port": "http"}]}]),
     [("ingress", "scrape")]),
    # namespaceSelector with podSelector, matching a pod that exists
    (policy("from-prom", {}, types=["Ingress"], ingress=[{"from": [{
        "namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "prometheus"}}}]}]),
     [("ingress", "from-prom")]),
    # ... and matching no pod anywhere: allows nothing today
    (policy("from-nobody", {}, types=["Ingress"], ingress=[{"from": [{
        "namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "ghost"}}}]}]), []),
    # ingress from the forensics namespace only: the allowance itself
    (policy("forensics", {}, types=["Ingress"], ingress=[{"from": [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "forensics"}}}]}]), []),
    # an ipBlock, even one that excepts most of the world, is judged by what it can let in
    (policy("from-net", {}, types=["Ingress"], ingress=[{"from": [{"ipBlock": {
        "cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}]), [("ingress", "from-net")]),
    # egress to the internet on 443
    (policy("egress-443", {}, types=["Egress"], egress=[{"to": [{"ipBlock": {
        "cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]}]), [("egress", "egress-443")]),
    # egress to the database
    (policy("to-db", {"matchLabels": {"app": "web"}}, types=["Egress"], egress=[{
        "to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 5432}]}]),
     [("egress", "to-db")]),
    # a DNS egress rule allows what the quarantine allows anyway: not a finding
    (policy("dns", {}, types=["Egress"], egress=[{"to": [DNS_PEER], "ports": DNS_PORTS}]), []),
    # ... with named ports that resolve to 53 on the DNS pods
    (policy("dns-named", {}, types=["Egress"], egress=[{"to": [DNS_PEER], "ports": [
        {"protocol": "UDP", "port": "dns"}, {"protocol": "TCP", "port": "dns-tcp"}]}]), []),
    # ... but a named port resolving elsewhere, an endPort range, or every port is more
    (policy("dns-metrics", {}, types=["Egress"], egress=[{"to": [DNS_PEER], "ports": [
        {"protocol": "TCP", "port": "metrics"}]}]), [("egress", "dns-metrics")]),
    (policy("dns-range", {}, types=["Egress"], egress=[{"to": [DNS_PEER], "ports": [
        {"protocol": "UDP", "port": 53, "endPort": 60}]}]), [("egress", "dns-range")]),
    (policy("dns-any-port", {}, types=["Egress"], egress=[{"to": [DNS_PEER]}]),
     [("egress", "dns-any-port")]),
    # port 53 anywhere is not DNS to the cluster DNS
    (policy("port-53-anywhere", {}, types=["Egress"], egress=[{"ports": DNS_PORTS}]),
     [("egress", "port-53-anywhere")]),
    # the whole kube-system namespace on 53 reaches metrics-server too
    (policy("kube-system-53", {}, types=["Egress"], egress=[{"to": [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}], "ports": DNS_PORTS}]),
     [("egress", "kube-system-53")]),
    # a policy in another namespace never selects the target
    (policy("elsewhere", {}, types=["Ingress"], ingress=[{}], namespace="monitoring"), []),
])
def test_other_policies_are_judged_against_the_allowances(
    other: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert flows(other) == expected


def test_without_allowances_even_the_forensics_and_dns_rules_are_excess() -> None:
    own = policy(OWN, {"matchLabels": {quarantine_label(KEY): "true"}}, types=["Ingress", "Egress"])
    found = excess(TARGET, [own, policy("dns", {}, types=["Egress"], egress=[
        {"to": [DNS_PEER], "ports": DNS_PORTS}])], OWN, Allowances(), WORLD)
    assert [(f.direction, f.policy) for f in found] == [("egress", "dns")]


def test_findings_say_which_flow_and_which_policy() -> None:
    (finding,) = excess(TARGET, [OWN_POLICY, policy("egress-443", {}, types=["Egress"], egress=[{
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
        "ports": [{"port": 443}]}])], OWN, ALLOW, WORLD)
    assert str(finding) == ("web-1: egress to 0.0.0.0/0 except 10.0.0.0/8 on TCP 443 "
                            "(NetworkPolicy egress-443)")
    (finding,) = excess(TARGET, [OWN_POLICY, policy("scrape", {}, types=["Ingress"], ingress=[{
        "from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}},
                  "podSelector": {"matchLabels": {"app": "prometheus"}}}]}])], OWN, ALLOW, WORLD)
    assert str(finding) == ("web-1: ingress from pods app=prometheus in namespaces team=ops on "
                            "every port (NetworkPolicy scrape)")


def test_the_exclusion_term_takes_the_quarantined_pod_out_and_revert_restores_exactly() -> None:
    original = {"matchLabels": {"tier": "front"},
                "matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}
    excluded = with_exclusion(original, KEY)
    assert excluded["matchExpressions"][-1] == exclusion_term(KEY)
    assert not selects(excluded, TARGET.labels)
    released = {k: v for k, v in TARGET.labels.items() if k != quarantine_label(KEY)}
    assert selects(excluded, released), "only quarantined pods drop out"
    assert with_exclusion(excluded, KEY) == excluded, "adding twice adds once"
    assert without_exclusion(excluded, KEY) == original
    assert without_exclusion({}, KEY) == {}
    assert without_exclusion(with_exclusion({}, KEY), KEY) == {}
    other_incident = with_exclusion(excluded, "other")
    assert without_exclusion(other_incident, KEY) == with_exclusion(original, "other")
    assert has_exclusion({"spec": {"podSelector": excluded}}, KEY)
    assert not has_exclusion({"spec": {"podSelector": original}}, KEY)


def test_once_excluded_a_policy_no_longer_defeats_the_quarantine() -> None:
    allow_all = policy("allow-all", {}, types=["Ingress"], ingress=[{}])
    assert flows(allow_all) == [("ingress", "allow-all")]
    allow_all["spec"]["podSelector"] = with_exclusion(allow_all["spec"]["podSelector"], KEY)
    assert flows(allow_all) == []


def test_only_foreign_non_quarantine_policies_are_excluded() -> None:
    allow_all = policy("allow-all", {}, types=["Ingress"], ingress=[{}])
    # another incident's quarantine (or one made to look like it) is judged, not excluded
    forged = policy("firebreak-quarantine-evil", {"matchLabels": {quarantine_label(KEY): "true"}},
                    types=["Ingress"], ingress=[{}])
    assert is_quarantine_policy(forged) and not is_quarantine_policy(allow_all)
    policies = [OWN_POLICY, allow_all, forged]
    found = excess(TARGET, policies, OWN, ALLOW, WORLD)
    assert {f.policy for f in found} == {"allow-all", "firebreak-quarantine-evil"}
    assert to_exclude(found, PolicySet(policies), OWN) == ["allow-all"]


def test_the_quarantine_label_is_the_firebreak_prefix_and_the_incident_key() -> None:
    assert quarantine_label(KEY) == "quarantine.firebreak.dev/miner"
    assert exclusion_term(KEY) == {"key": "quarantine.firebreak.dev/miner", "operator": "DoesNotExist"}


@pytest.mark.parametrize(("pod", "expected"), [
    # named ports from every container; protocol defaults to TCP; unnamed ports and
    # ports without a number are not named ports
    ({"metadata": {"namespace": NS, "name": "web-1", "labels": {"app": "web"}},
      "spec": {"hostNetwork": True, "containers": [
          {"name": "app", "ports": [{"name": "http", "containerPort": 8080},
                                    {"containerPort": 9090},
                                    {"name": "ghost"}]},
          {"name": "sidecar"},
          {"name": "dns", "ports": [{"name": "dns", "protocol": "UDP", "containerPort": 53},
                                    {"name": "dns-tcp", "protocol": "TCP", "containerPort": "53"}]}]}},
     PodView(NS, "web-1", {"app": "web"},
             named_ports={"http": ("TCP", 8080), "dns": ("UDP", 53), "dns-tcp": ("TCP", 53)},
             host_network=True)),
    # a port numbered 0 is still a number
    ({"metadata": {"namespace": NS, "name": "zero"},
      "spec": {"containers": [{"ports": [{"name": "zero", "containerPort": 0}]}]}},
     PodView(NS, "zero", {}, named_ports={"zero": ("TCP", 0)})),
    # no spec, no labels, no containers: nothing but where the pod is
    ({"metadata": {"namespace": NS, "name": "bare"}}, PodView(NS, "bare", {})),
    ({"metadata": {"namespace": NS, "name": "nulls", "labels": None},
      "spec": {"containers": None, "hostNetwork": False}}, PodView(NS, "nulls", {})),
])
def test_a_pod_is_seen_by_where_it_is_its_labels_and_its_named_ports(
    pod: dict[str, Any], expected: PodView
) -> None:
    view = PodView.of(pod)
    assert view == expected
    assert (view.namespace, view.name, dict(view.labels), dict(view.named_ports),
            view.host_network) == (expected.namespace, expected.name, dict(expected.labels),
                                   dict(expected.named_ports), expected.host_network)


@pytest.mark.parametrize(("allow", "text"), [
    (ALLOW, "ingress from namespace forensics and DNS to kube-system pods k8s-app=kube-dns"),
    (Allowances(), "nothing"),
    (Allowances(forensics_namespace="forensics"), "ingress from namespace forensics"),
    (Allowances(forensics_namespace=""), "nothing"),
    (Allowances(dns_namespace="kube-system"), "DNS to kube-system pods (all)"),
    (Allowances(dns_namespace="", dns_selector={"b": "2", "a": "1"}), "DNS to  pods a=1,b=2"),
])
def test_the_allowances_describe_themselves(allow: Allowances, text: str) -> None:
    assert allow.describe() == text


def test_a_finding_without_a_policy_says_so() -> None:
    unlabelled = PodView(NS, "web-1", {"app": "web"})
    found = excess(unlabelled, [OWN_POLICY], OWN, ALLOW, WORLD)
    assert [str(f) for f in found] == [
        f"web-1: all {d}: the quarantine policy {OWN} does not select the pod (no NetworkPolicy)"
        for d in ("ingress", "egress")]


def test_an_unselected_pod_is_reported_once_per_direction_not_per_policy() -> None:
    unlabelled = PodView(NS, "web-1", {"app": "web"})
    allow_all = policy("allow-all", {}, types=["Ingress", "Egress"], ingress=[{}], egress=[{}])
    found = excess(unlabelled, [OWN_POLICY, allow_all], OWN, ALLOW, WORLD)
    assert [(f.direction, f.policy) for f in found] == [("ingress", None), ("egress", None)]


def flow_text(direction: str, rule: dict[str, Any], namespace: str = NS) -> str:
    """How the one finding a rule makes, in a policy selecting the target, reads."""
    other = policy("other", {}, types=[direction.capitalize()], **{direction: [rule]})
    (finding,) = excess(TARGET, [OWN_POLICY, other], OWN, ALLOW, WORLD)
    assert finding.policy == "other"
    return finding.flow


@pytest.mark.parametrize(("direction", "rule", "text"), [
    ("ingress", {}, "ingress from anywhere on every port"),
    ("egress", {"to": []}, "egress to anywhere on every port"),
    ("ingress", {"from": [{"podSelector": {}}]}, "ingress from every pod in namespace shop on every port"),
    ("ingress", {"from": [{"namespaceSelector": {}}]},
     "ingress from every pod in every namespace on every port"),
    ("ingress", {"from": [{"namespaceSelector": {"matchLabels": {}}}]},
     "ingress from every pod in namespaces (all) on every port"),
    ("ingress", {"from": [{"podSelector": {"matchLabels": {}}}]},
     "ingress from pods (all) in namespace shop on every port"),
    ("ingress", {"from": [{"namespaceSelector": {"matchLabels": {
        "team": "ops", "kubernetes.io/metadata.name": "monitoring"}}}]},
     "ingress from every pod in namespaces kubernetes.io/metadata.name=monitoring,team=ops on every port"),
    # matchExpressions, after matchLabels; an operator without values has no trailing space
    ("ingress", {"from": [{"podSelector": {
        "matchLabels": {"app": "db"},
        "matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "cache"]},
                             {"key": "debug", "operator": "DoesNotExist"}]}}]},
     "ingress from pods app=db,app In db,cache,debug DoesNotExist in namespace shop on every port"),
    # several peers, several ports; protocol defaults to TCP; a port range; a protocol
    # without a port is every port of it
    ("egress", {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}},
                       {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "192.168.0.0/16"]}}],
                "ports": [{"port": 443}, {"protocol": "UDP", "port": 5000, "endPort": 5010},
                          {"protocol": "SCTP"}]},
     "egress to 10.0.0.0/8; 0.0.0.0/0 except 10.0.0.0/8, 192.168.0.0/16 "
     "on TCP 443, UDP 5000-5010, SCTP every port"),
    ("egress", {"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": "postgres"}]},
     "egress to pods app=db in namespace shop on TCP postgres"),
])
def test_findings_describe_the_rule_that_opens_the_pod(direction: str, rule: dict[str, Any],
                                                       text: str) -> None:
    assert flow_text(direction, rule) == text


FORENSIC_TARGET = PodView("forensics", "kit", {"app": "kit", quarantine_label(KEY): "true"})


@pytest.mark.parametrize(("other", "pod", "allow", "expected"), [
    # an ipBlock is not the forensics namespace, even in a policy that lives there
    (policy("from-net", {}, types=["Ingress"], namespace="forensics",
            ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]),
     FORENSIC_TARGET, ALLOW, [("ingress", "from-net")]),
    # ... while its pods may reach a pod quarantined there
    (policy("local", {}, types=["Ingress"], namespace="forensics",
            ingress=[{"from": [{"podSelector": {}}]}]), FORENSIC_TARGET, ALLOW, []),
    # DNS on port 53 with the protocol left to its TCP default, by number or by name
    (policy("dns-tcp", {}, types=["Egress"], egress=[{"to": [DNS_PEER], "ports": [{"port": 53}]}]),
     TARGET, ALLOW, []),
    (policy("dns-tcp-named", {}, types=["Egress"], egress=[{"to": [DNS_PEER], "ports": [
        {"port": "dns-tcp"}]}]), TARGET, ALLOW, []),
    # a range that ends where it starts is one port
    (policy("dns-one-port-range", {}, types=["Egress"], egress=[{"to": [DNS_PEER], "ports": [
        {"protocol": "UDP", "port": 53, "endPort": 53}]}]), TARGET, ALLOW, []),
    # a port entry without a port is every port of its protocol
    (policy("dns-udp-any", {}, types=["Egress"], egress=[{"to": [DNS_PEER], "ports": [
        {"protocol": "UDP"}]}]), TARGET, ALLOW, [("egress", "dns-udp-any")]),
    (policy("dns-then-any", {}, types=["Egress"], egress=[{"to": [DNS_PEER], "ports": [
        {"protocol": "UDP", "port": 53}, {"protocol": "TCP"}]}]), TARGET, ALLOW,
     [("egress", "dns-then-any")]),
    # port 53 that is not UDP or TCP
    (policy("dns-sctp", {}, types=["Egress"], egress=[{"to": [DNS_PEER], "ports": [
        {"protocol": "SCTP", "port": 53}]}]), TARGET, ALLOW, [("egress", "dns-sctp")]),
    # a peer selecting no pod today, next to the DNS peer, allows nothing more
    (policy("dns-and-ghost", {}, types=["Egress"], egress=[{"to": [
        DNS_PEER, {"podSelector": {"matchLabels": {"app": "ghost"}}}], "ports": DNS_PORTS}]),
     TARGET, ALLOW, []),
    # ... nor does one selecting no pod in the DNS namespace
    (policy("dns-ghost", {}, types=["Egress"], egress=[{"to": [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"app": "ghost"}}}], "ports": DNS_PORTS}]),
     TARGET, ALLOW, []),
    # a peer selecting other pods of the DNS namespace is more than DNS
    (policy("dns-metrics-server", {}, types=["Egress"], egress=[{"to": [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {}}], "ports": DNS_PORTS}]),
     TARGET, ALLOW, [("egress", "dns-metrics-server")]),
    # egress to the forensics namespace is not an allowance
    (policy("to-forensics", {}, types=["Egress"], egress=[{"to": [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "forensics"}}}], "ports": DNS_PORTS}]),
     TARGET, ALLOW, [("egress", "to-forensics")]),
    # the whole DNS namespace, when every pod is labelled like the cluster DNS: the
    # allowance itself
    (policy("kube-system-53", {}, types=["Egress"], egress=[{"to": [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}], "ports": DNS_PORTS}]),
     TARGET, Allowances(dns_namespace="kube-system"), []),
    # the whole DNS namespace is judged by every pod that may ever run there, not by
    # who runs there today: only a DNS selector of the whole namespace covers it
    (policy("kube-system-53-today", {}, types=["Egress"], egress=[{"to": [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}], "ports": DNS_PORTS}]),
     TARGET, Allowances(dns_namespace="kube-system", dns_selector={"k8s-app": "kube-dns"}),
     [("egress", "kube-system-53-today")]),
    # a whole DNS namespace with no pod in it yet could hold anything
    (policy("empty-53", {}, types=["Egress"], egress=[{"to": [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "empty"}}}], "ports": DNS_PORTS}]),
     TARGET, Allowances(dns_namespace="empty", dns_selector={"k8s-app": "kube-dns"}),
     [("egress", "empty-53")]),
    # a selector in the empty DNS namespace selects no pod: nothing allowed today
    (policy("empty-dns-pods", {}, types=["Egress"], egress=[{"to": [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "empty"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}], "ports": DNS_PORTS}]),
     TARGET, Allowances(dns_namespace="empty", dns_selector={"k8s-app": "kube-dns"}), []),
])
def test_more_rules_are_judged_against_the_allowances(
    other: dict[str, Any], pod: PodView, allow: Allowances, expected: list[tuple[str, str]]
) -> None:
    # the quarantine's own policy, here allowing nothing: only the other one is judged
    own = policy(OWN, {"matchLabels": {quarantine_label(KEY): "true"}}, types=["Ingress", "Egress"],
                 namespace=pod.namespace)
    found = excess(pod, [own, other], OWN, allow, WORLD)
    assert [(f.direction, f.policy) for f in found] == expected


def _blind_world() -> World:
    def refuse(*_: Any) -> Any:
        raise AssertionError("the judge looked at the world")

    class Nowhere(dict[str, Any]):
        __getitem__ = __iter__ = __len__ = items = refuse  # type: ignore[assignment]

    return World(namespaces=Nowhere(), pods_in=refuse)


def test_the_quarantine_alone_is_judged_from_its_rules_shape_without_reading_the_world() -> None:
    # Its rules name the forensics and DNS namespaces by name and the DNS pods by the
    # allowance's own selector: nothing any namespace or pod holds can widen them.
    assert excess(TARGET, [OWN_POLICY], OWN, ALLOW, _blind_world()) == []
    assert is_allowance(OWN_POLICY["spec"]["ingress"][0], "ingress", ALLOW)
    assert is_allowance(OWN_POLICY["spec"]["egress"][0], "egress", ALLOW)


@pytest.mark.parametrize(("direction", "rule"), [
    # another namespace, or a namespace chosen by a label anyone may set
    ("ingress", {"from": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]}),
    ("ingress", {"from": [{"namespaceSelector": {"matchLabels": {"team": "forensics"}}}]}),
    ("ingress", {"from": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "forensics", "team": "x"}}}]}),
    ("ingress", {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}),
    ("ingress", {"from": []}),
    # DNS pods chosen more widely than the allowance, or every port, or a named port
    ("egress", {"to": [{**DNS_PEER, "podSelector": {}}], "ports": DNS_PORTS}),
    ("egress", {"to": [{**DNS_PEER, "podSelector": {"matchExpressions": [
        {"key": "k8s-app", "operator": "Exists"}]}}], "ports": DNS_PORTS}),
    ("egress", {"to": [DNS_PEER]}),
    ("egress", {"to": [DNS_PEER], "ports": [{"protocol": "UDP", "port": "dns"}]}),
    ("egress", {"to": [DNS_PEER], "ports": [{"protocol": "UDP", "port": 53, "endPort": 60}]}),
    ("egress", {"to": [DNS_PEER], "ports": [{"protocol": "SCTP", "port": 53}]}),
    ("egress", {"to": [{"namespaceSelector": DNS_PEER["namespaceSelector"]}],
                "ports": DNS_PORTS}),
])
def test_rules_of_any_other_shape_are_judged_against_the_world(direction: str,
                                                               rule: dict[str, Any]) -> None:
    assert not is_allowance(rule, direction, ALLOW)  # type: ignore[arg-type]


# A world built to widen what a rule allows: a copy-cat namespace labelled like the
# DNS and forensics namespaces (but for the name label), non-DNS pods in kube-system.
HOSTILE = World(
    namespaces={**WORLD.namespaces,
                "impostor": {"kubernetes.io/metadata.name": "impostor", "team": "forensics"}},
    pods_in=lambda ns: [*WORLD.pods_in(ns), PodView(ns, "anything", {"app": "shell"})],
)
FORENSICS_ONLY = Allowances(forensics_namespace="forensics")
ANY_DNS_POD = Allowances(dns_namespace="kube-system", dns_selector={})


@pytest.mark.parametrize(("direction", "rule", "allow", "shaped"), [
    ("ingress", OWN_POLICY["spec"]["ingress"][0], ALLOW, True),
    ("ingress", OWN_POLICY["spec"]["ingress"][0], FORENSICS_ONLY, True),
    ("ingress", OWN_POLICY["spec"]["ingress"][0], Allowances(), False),
    ("ingress", {"from": [{**OWN_POLICY["spec"]["ingress"][0]["from"][0],
                           "podSelector": {"matchLabels": {"app": "kit"}}}]}, ALLOW, True),
    ("egress", OWN_POLICY["spec"]["egress"][0], ALLOW, True),
    ("egress", OWN_POLICY["spec"]["egress"][0], ANY_DNS_POD, False),
    ("egress", OWN_POLICY["spec"]["egress"][0], FORENSICS_ONLY, False),
    ("egress", {"to": [{**DNS_PEER, "podSelector": {}}], "ports": [{"port": 53}]},
     ANY_DNS_POD, True),
    ("egress", {"to": [{**DNS_PEER, "podSelector": {"matchLabels": {}}}],
                "ports": [{"port": 53}]}, ANY_DNS_POD, True),
    ("egress", {"to": [{"namespaceSelector": DNS_PEER["namespaceSelector"]}],
                "ports": DNS_PORTS}, ANY_DNS_POD, True),
    ("egress", {"to": [{"namespaceSelector": DNS_PEER["namespaceSelector"]}],
                "ports": DNS_PORTS}, ALLOW, False),
])
def test_a_rule_shaped_like_the_allowances_is_within_them_in_any_world(
        direction: str, rule: dict[str, Any], allow: Allowances, shaped: bool) -> None:
    assert is_allowance(rule, direction, allow) is shaped  # type: ignore[arg-type]
    if shaped:  # the shortcut agrees with judging it against the pods and namespaces
        for world in (WORLD, HOSTILE):
            assert judged_within(rule, direction, NS, allow, world)  # type: ignore[arg-type]


def test_a_policy_adds_nothing_only_when_each_of_its_rules_is_one_of_the_quarantines() -> None:
    same = policy("firebreak-quarantine-other", {"matchLabels": {quarantine_label("other"): "true"}},
                  types=["Ingress", "Egress"], ingress=OWN_POLICY["spec"]["ingress"],
                  egress=OWN_POLICY["spec"]["egress"])
    assert adds_nothing(same, OWN_POLICY)
    assert adds_nothing(policy("deny", {}, types=["Ingress", "Egress"]), OWN_POLICY)
    assert adds_nothing(policy("dns", {}, types=["Egress"],
                               egress=OWN_POLICY["spec"]["egress"]), OWN_POLICY)
    # Another quarantine allowing the forensics namespace where this one allows none.
    strict = policy(OWN, {"matchLabels": {quarantine_label(KEY): "true"}},
                    types=["Ingress", "Egress"], egress=OWN_POLICY["spec"]["egress"])
    assert not adds_nothing(same, strict)
    assert adds_nothing(strict, same)
    assert not adds_nothing(policy("allow-all", {}, ingress=[{}]), OWN_POLICY)
    assert not adds_nothing(policy("egress", {}, egress=[{"ports": DNS_PORTS}]), OWN_POLICY)


def test_the_policies_selecting_a_pod_are_found_by_its_quarantine_labels_and_tried_otherwise(
) -> None:
    theirs = policy("firebreak-quarantine-other",
                    {"matchLabels": {quarantine_label("other"): "true"}})
    narrowed = policy("firebreak-quarantine-narrow", {
        "matchLabels": {quarantine_label("narrow"): "true"},
        "matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]})
    odd = policy("firebreak-quarantine-odd", {"matchLabels": {quarantine_label("odd"): "yes"}})
    front = policy("front", {"matchLabels": {"tier": "front"}})
    db = policy("db", {"matchLabels": {"app": "db"}})
    index = PolicySet([OWN_POLICY, theirs, narrowed, odd, front, db])
    # Found by label, not tried: the quarantine policies that select by their label alone.
    assert index.by_label() == {quarantine_label(KEY): [OWN],
                                quarantine_label("other"): ["firebreak-quarantine-other"]}
    assert index.tried() == [
        "firebreak-quarantine-narrow", "firebreak-quarantine-odd", "front", "db"]
    assert index.get("front") is front and index.get("nothing") is None
    assert sorted(p["metadata"]["name"] for p in index) == sorted([
        OWN, "firebreak-quarantine-other", "firebreak-quarantine-narrow",
        "firebreak-quarantine-odd", "front", "db"]) and len(index) == 6
    names = [p["metadata"]["name"] for p in index.selecting(TARGET.labels)]
    assert sorted(names) == sorted([OWN, "front"])
    both = {**TARGET.labels, quarantine_label("other"): "true", quarantine_label("odd"): "yes"}
    assert sorted(p["metadata"]["name"] for p in index.selecting(both)) == sorted(
        [OWN, "firebreak-quarantine-other", "firebreak-quarantine-odd", "front"])
    # A quarantine label with another value selects nothing by it.
    assert [p["metadata"]["name"] for p in index.selecting({quarantine_label("other"): "false"})] == []
    # A policy with more than the label is tried like any other.
    assert [p["metadata"]["name"] for p in index.selecting(
        {quarantine_label("narrow"): "true", "app": "db"})] == ["firebreak-quarantine-narrow",
                                                                 "db"]
    assert index.selecting({quarantine_label("narrow"): "true"}) == []


def test_a_policy_set_changes_one_policy_at_a_time_and_its_copies_are_apart() -> None:
    theirs = policy("firebreak-quarantine-other",
                    {"matchLabels": {quarantine_label("other"): "true"}})
    front = policy("front", {"matchLabels": {"tier": "front"}})
    index = PolicySet([OWN_POLICY, theirs, front])
    copy = index.copy()
    # A policy replaced under its name moves between the label index and the tried ones.
    widened = policy("firebreak-quarantine-other", {"matchLabels": {"tier": "front"}})
    copy.put(widened)
    assert copy.by_label() == {quarantine_label(KEY): [OWN]}
    assert copy.tried() == ["front", "firebreak-quarantine-other"]
    assert [p["metadata"]["name"] for p in copy.selecting({"tier": "front"})] == [
        "front", "firebreak-quarantine-other"]
    assert copy.get("firebreak-quarantine-other") is widened and len(copy) == 3
    # ... and back; two quarantine policies under one label are both found, one goes alone.
    twin = policy("twin", {"matchLabels": {quarantine_label(KEY): "true"}})
    copy.put(theirs)
    copy.put(twin)
    assert copy.by_label() == {quarantine_label(KEY): [OWN, "twin"],
                               quarantine_label("other"): ["firebreak-quarantine-other"]}
    copy.discard(OWN)
    copy.discard("front")
    copy.discard("never-there")
    assert copy.by_label() == {quarantine_label(KEY): ["twin"],
                               quarantine_label("other"): ["firebreak-quarantine-other"]}
    assert copy.tried() == []
    copy.discard("twin")
    assert copy.by_label() == {quarantine_label("other"): ["firebreak-quarantine-other"]}
    # The set it was copied from saw none of it.
    assert index.by_label() == {quarantine_label(KEY): [OWN],
                                quarantine_label("other"): ["firebreak-quarantine-other"]}
    assert index.tried() == ["front"] and index.get("firebreak-quarantine-other") is theirs
    assert [p["metadata"]["name"] for p in index.selecting(TARGET.labels)] == [OWN, "front"]


# Policies by name as a set of them must answer: a name put again moves to the end.
SHAPES = {
    "own-label": {"matchLabels": {quarantine_label("a"): "true"}},
    "other-label": {"matchLabels": {quarantine_label("b"): "true"}},
    "narrowed": {"matchLabels": {quarantine_label("a"): "true"},
                 "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]},
    "front": {"matchLabels": {"tier": "front"}},
    "everything": {},
}
OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from("pqrstu"), st.sampled_from(sorted(SHAPES))),
    st.tuples(st.just("discard"), st.sampled_from("pqrstuv"), st.just("")),
    st.tuples(st.just("copy"), st.just(""), st.just(""))), max_size=60)
ASKED = [{quarantine_label("a"): "true", "tier": "front"},
         {quarantine_label("b"): "true", quarantine_label("a"): "true"},
         {quarantine_label("a"): "false"}, {"tier": "back"}]


def answers(index: PolicySet) -> tuple[Any, ...]:
    return (
        [p["metadata"]["name"] for p in index], len(index), index.by_label(), index.tried(),
        [[p["metadata"]["name"] for p in index.selecting(labels)] for labels in ASKED],
        {name: index.get(name) for name in "pqrstuv"})


@given(OPERATIONS, st.integers(min_value=1, max_value=5))
# Always tried: a name put again moves to the end; one of two policies of a label
# gone in a fold leaves the other.
@example([("put", "p", "front"), ("put", "q", "front"), ("put", "p", "front")], 5)
@example([("put", "p", "own-label"), ("put", "q", "own-label"), ("discard", "p", "")], 1)
def test_a_policy_set_answers_as_its_policies_would_if_indexed_afresh(
        operations: list[tuple[str, str, str]], fold_at: int) -> None:
    """Whatever the puts, discards and copies, and however often the changes are
    folded into a new index, a set answers as a set made afresh from its policies (in
    the order they were last put); and a copy is changed apart from its original."""
    folding = PolicySet.FOLD_AT
    PolicySet.FOLD_AT = fold_at
    try:
        _check_against_fresh_sets(operations)
    finally:
        PolicySet.FOLD_AT = folding


def _check_against_fresh_sets(operations: list[tuple[str, str, str]]) -> None:
    sets = [PolicySet()]
    models: list[dict[str, dict[str, Any]]] = [{}]
    for step, (op, name, shape) in enumerate(operations):
        which = step % len(sets)
        if op == "copy":
            sets.append(sets[which].copy())
            models.append(dict(models[which]))
            continue
        if op == "put":
            made = policy(name, SHAPES[shape])
            sets[which].put(made)
            models[which].pop(name, None)
            models[which][name] = made
        else:
            sets[which].discard(name)
            models[which].pop(name, None)
        for index, model in zip(sets, models, strict=True):
            assert answers(index) == answers(PolicySet(model.values()))


def _copied(index: PolicySet, times: int = 100) -> tuple[list[PolicySet], float]:
    """Copies of the set, and the memory each took."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        copies = [index.copy() for _ in range(times)]
        per_copy = (tracemalloc.get_traced_memory()[0] - before) / times
    finally:
        tracemalloc.stop()
    return copies, per_copy


def test_a_copy_costs_the_changes_not_the_namespace() -> None:
    """Every quarantine run takes a copy of its namespace's set: with thousands of
    quarantines there, a copy made of the whole index had cost each run its size."""
    index = PolicySet(policy(f"firebreak-quarantine-{i}",
                             {"matchLabels": {quarantine_label(str(i)): "true"}})
                      for i in range(3000))
    index.put(policy("front", {"matchLabels": {"tier": "front"}}))
    copies, per_copy = _copied(index)
    assert per_copy < 2048, per_copy
    assert all(len(c) == 3001 and c.get("front") is not None for c in copies)


def test_a_set_changed_one_policy_at_a_time_keeps_its_copies_cheap() -> None:
    """The view's sets change a policy at a time, thousands of times: the changes are
    folded into a new index as they go, so a copy stays cheap however many came."""
    index = PolicySet()
    for i in range(3000):
        index.put(policy(f"firebreak-quarantine-{i}",
                         {"matchLabels": {quarantine_label(str(i)): "true"}}))
    copies, per_copy = _copied(index)
    assert per_copy < 16384, per_copy
    assert all(len(c) == 3000 for c in copies)
    assert index.by_label()[quarantine_label("2999")] == ["firebreak-quarantine-2999"]


def test_the_changes_are_indexed_once_until_the_next_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A quarantine asks its copy of the namespace's set again and again (each pod,
    each judgement): the changes since the last fold are indexed for the first
    question only, shared with a copy made then, and indexed again after a change."""
    from firebreak import isolation

    index = PolicySet(policy(f"firebreak-quarantine-{i}",
                             {"matchLabels": {quarantine_label(str(i)): "true"}})
                      for i in range(10))
    index.put(policy("front", {"matchLabels": {"tier": "front"}}))
    made: list[int] = []
    real = isolation._Index

    class Counted(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any) -> None:
            made.append(1)
            super().__init__(*args)

    monkeypatch.setattr(isolation, "_Index", Counted)
    labels = {quarantine_label("3"): "true", "tier": "front"}
    for _ in range(5):
        assert [p["metadata"]["name"] for p in index.selecting(labels)] == \
            ["firebreak-quarantine-3", "front"]
    assert index.tried() == ["front"]
    assert len(made) == 1
    copy = index.copy()
    copy.selecting(labels)
    assert len(made) == 1
    copy.put(policy("back", {"matchLabels": {"tier": "front"}}))
    assert [p["metadata"]["name"] for p in copy.selecting(labels)] == \
        ["firebreak-quarantine-3", "front", "back"]
    assert len(made) == 2
    assert [p["metadata"]["name"] for p in index.selecting(labels)] == \
        ["firebreak-quarantine-3", "front"]
    copy.discard("front")
    assert [p["metadata"]["name"] for p in copy.selecting(labels)] == \
        ["firebreak-quarantine-3", "back"]
    assert len(made) == 3


def test_a_fold_judges_the_changed_policies_not_the_namespace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every policy event of a namespace is a put into its set, and every ``FOLD_AT``
    puts are folded into a new index: with thousands of quarantines there, judging
    every policy again at each fold had been the largest part of following them."""
    from firebreak import isolation

    index = PolicySet(policy(f"firebreak-quarantine-{i}",
                             {"matchLabels": {quarantine_label(str(i)): "true"}})
                      for i in range(3000))
    judged: list[str] = []
    real = isolation._by_its_label

    def counted(p: dict[str, Any]) -> str | None:
        judged.append(p["metadata"]["name"])
        return real(p)

    monkeypatch.setattr(isolation, "_by_its_label", counted)
    for i in range(PolicySet.FOLD_AT):  # replaced, added and gone, then folded
        if i % 3 == 0:
            index.put(policy(f"firebreak-quarantine-{i}", {"matchLabels": {"tier": "front"}}))
        elif i % 3 == 1:
            index.put(policy(f"firebreak-quarantine-new-{i}",
                             {"matchLabels": {quarantine_label(f"new-{i}"): "true"}}))
        else:
            index.discard(f"firebreak-quarantine-{i}")
    assert len(judged) <= 2 * PolicySet.FOLD_AT, len(judged)
    added = sum(1 for i in range(PolicySet.FOLD_AT) if i % 3 == 1)
    gone = sum(1 for i in range(PolicySet.FOLD_AT) if i % 3 == 2)
    assert len(index) == 3000 + added - gone
    assert index.tried() == [f"firebreak-quarantine-{i}" for i in range(0, PolicySet.FOLD_AT, 3)]
    assert index.by_label()[quarantine_label("new-1")] == ["firebreak-quarantine-new-1"]
    assert quarantine_label("0") not in index.by_label()
    assert quarantine_label("2") not in index.by_label()
    assert index.by_label()[quarantine_label("2999")] == ["firebreak-quarantine-2999"]
