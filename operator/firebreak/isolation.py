"""What a quarantined pod can still send and receive, decided from NetworkPolicies.

NetworkPolicies are additive: a pod's ingress is the union of what every policy
selecting it for ingress allows (and the same for egress), and a pod that no policy
selects in a direction is open in that direction. A quarantine that is only one
more deny policy is therefore opened by any other policy that allows the pod. This
module is the judge, as pure functions over the objects the operator can see:

- ``excess`` lists every flow the policies selecting a quarantined pod allow beyond
  the quarantine's declared allowances (ingress from a forensics namespace; DNS on
  port 53 to pods labelled like the cluster DNS). An empty list is what
  ``Contained`` means.
- ``with_exclusion`` / ``without_exclusion`` add and remove the term that takes
  quarantined pods out of another policy's ``podSelector``, and nothing else.

Peers are judged against the pods that exist now (``pods_in`` answers per
namespace), except where a rule opens to whole namespaces, address blocks, or
anything: those are judged by what they could let in, not by who is there today.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .selectors import selects

QUARANTINE_PREFIX = "quarantine.firebreak.dev/"
NAME_LABEL = "kubernetes.io/metadata.name"
DNS_PORTS = frozenset({("UDP", 53), ("TCP", 53)})
Direction = Literal["ingress", "egress"]
DIRECTIONS: tuple[Direction, ...] = ("ingress", "egress")
Obj = Mapping[str, Any]
Policy = dict[str, Any]  # a NetworkPolicy as the API has it


def quarantine_label(key: str) -> str:
    """The label that puts a pod in one incident's quarantine (value ``"true"``)."""
    return f"{QUARANTINE_PREFIX}{key}"


@dataclass(frozen=True)
class PodView:
    """What policies see of a pod: where it is, its labels, its named ports."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    named_ports: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    host_network: bool = False

    @classmethod
    def of(cls, pod: Obj) -> PodView:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        ports = {
            p["name"]: (p.get("protocol") or "TCP", int(p["containerPort"]))
            for c in spec.get("containers") or () for p in c.get("ports") or ()
            if p.get("name") and p.get("containerPort") is not None
        }
        return cls(namespace=meta["namespace"], name=meta["name"],
                   labels=dict(meta.get("labels") or {}), named_ports=ports,
                   host_network=bool(spec.get("hostNetwork")))


@dataclass(frozen=True)
class Allowances:
    """What a quarantine lets through on purpose."""

    forensics_namespace: str | None = None
    dns_namespace: str | None = None
    dns_selector: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        parts = []
        if self.forensics_namespace:
            parts.append(f"ingress from namespace {self.forensics_namespace}")
        if self.dns_namespace is not None:
            parts.append(f"DNS to {self.dns_namespace} pods {_labels(self.dns_selector)}")
        return " and ".join(parts) or "nothing"


@dataclass(frozen=True)
class Finding:
    """A flow the quarantine does not intend, and the policy that allows it."""

    pod: str
    direction: Direction
    policy: str | None  # None: no policy selects the pod in this direction
    flow: str

    def __str__(self) -> str:
        by = f"NetworkPolicy {self.policy}" if self.policy else "no NetworkPolicy"
        return f"{self.pod}: {self.flow} ({by})"


@dataclass(frozen=True)
class World:
    """The namespaces (name -> labels) and the pods per namespace the operator sees."""

    namespaces: Mapping[str, Mapping[str, str]]
    pods_in: Callable[[str], Sequence[PodView]]


# --- which policies apply ------------------------------------------------------------------


def policy_types(policy: Obj) -> set[str]:
    spec = policy.get("spec") or {}
    declared = spec.get("policyTypes")
    if declared:
        return set(declared)
    # The API server defaults it so; kept for objects that were never stored.
    return {"Ingress", *(("Egress",) if "egress" in spec else ())}


def selects_pod(policy: Obj, pod: PodView, direction: Direction) -> bool:
    meta, spec = policy["metadata"], policy.get("spec") or {}
    return (meta.get("namespace") == pod.namespace
            and direction.capitalize() in policy_types(policy)
            and selects(spec.get("podSelector") or {}, pod.labels))


def is_quarantine_policy(policy: Obj) -> bool:
    """A policy selecting pods by a quarantine label: this or another incident's own.
    Never given an exclusion term (two quarantines excluding each other would leave
    a pod that both hold in neither); their rules are judged like any other's."""
    selector = (policy.get("spec") or {}).get("podSelector") or {}
    return any(k.startswith(QUARANTINE_PREFIX) for k in selector.get("matchLabels") or {})


def _by_its_label(policy: Obj) -> str | None:
    """The quarantine label a policy selects by, when that is all it selects by (the
    shape of every incident's own policy); None for any other policy."""
    selector = (policy.get("spec") or {}).get("podSelector") or {}
    match = selector.get("matchLabels") or {}
    if len(match) != 1 or selector.get("matchExpressions"):
        return None
    ((label, value),) = match.items()
    return label if value == "true" and label.startswith(QUARANTINE_PREFIX) else None


class _Index:
    """Policies by name, quarantine policies by their label, the others apart. Never
    changed once made: sets and their copies share it."""

    __slots__ = ("by_label", "by_name", "others")

    def __init__(self, policies: Iterable[Policy] = ()) -> None:
        # A name given twice keeps the later policy.
        self.by_name: dict[str, Policy] = {p["metadata"]["name"]: p for p in policies}
        self.by_label: dict[str, tuple[Policy, ...]] = {}
        self.others: dict[str, Policy] = {}
        for name, policy in self.by_name.items():
            self._sort_in(name, policy)

    def _sort_in(self, name: str, policy: Policy) -> None:
        """File a policy already in ``by_name`` under its label, or with the others."""
        label = _by_its_label(policy)
        if label is None:
            self.others[name] = policy
        else:
            self.by_label[label] = (*self.by_label.get(label, ()), policy)

    def changed(self, changes: Mapping[str, Policy | None]) -> _Index:
        """A new index: this one with ``changes`` (by name, latest last; None: gone)
        made, in the order a fresh index of the same policies would hold them. Copies
        this one's maps and judges only the changed policies, where building it anew
        would judge every policy of the namespace again."""
        new = _Index.__new__(_Index)
        new.by_name, new.by_label, new.others = (
            self.by_name.copy(), self.by_label.copy(), self.others.copy())
        for name, policy in changes.items():
            old = new.by_name.pop(name, None)
            if old is not None:
                label = _by_its_label(old)
                if label is None:
                    del new.others[name]
                else:
                    kept = tuple(p for p in new.by_label[label] if p is not old)
                    if kept:
                        new.by_label[label] = kept
                    else:
                        del new.by_label[label]
            if policy is not None:
                new.by_name[name] = policy
                new._sort_in(name, policy)
        return new


class PolicySet:
    """A namespace's policies by name, and which of them select a pod, by its labels: a
    quarantine policy (one per incident, selecting by its label alone) is found by the
    pod's labels, every other policy is tried. Kept up to date one policy at a time
    (``put``, ``discard``), so that a namespace of a thousand quarantines is not
    indexed again for every question.

    A set is an index shared with its copies, never changed, and the policies put or
    discarded since (by name, latest last); those are folded into a new index once
    there are ``FOLD_AT`` of them. So ``copy`` costs the changes, not the namespace:
    every quarantine run asks for one, and a namespace of thousands of quarantines had
    cost each run its own copy of every index."""

    __slots__ = ("_base", "_changed_index", "_changes")

    FOLD_AT = 64

    def __init__(self, policies: Iterable[Policy] = ()) -> None:
        self._base = _Index(policies)
        # By name: the policy put, or None for one discarded from the index.
        self._changes: dict[str, Policy | None] = {}
        # The changes indexed alike, once asked for, until the next change.
        self._changed_index: _Index | None = None

    def put(self, policy: Policy) -> None:
        """Add a policy, or replace the one of its name."""
        name = policy["metadata"]["name"]
        self._changes.pop(name, None)
        self._changes[name] = policy
        self._changed_index = None
        self._fold()

    def discard(self, name: str) -> None:
        self._changes.pop(name, None)
        self._changed_index = None
        if name in self._base.by_name:
            self._changes[name] = None
            self._fold()

    def _fold(self) -> None:
        if len(self._changes) >= self.FOLD_AT:
            self._base, self._changes = self._base.changed(self._changes), {}

    def copy(self) -> PolicySet:
        other = PolicySet.__new__(PolicySet)
        other._base = self._base
        other._changes = self._changes.copy()
        other._changed_index = self._changed_index  # an _Index is never changed
        return other

    def get(self, name: str) -> Policy | None:
        if name in self._changes:
            return self._changes[name]
        return self._base.by_name.get(name)

    def _found(self, label: str, changed: _Index) -> list[Policy]:
        """The policies found by a quarantine label: the index's still there, then
        those put since."""
        return [*(p for p in self._base.by_label.get(label, ())
                  if p["metadata"]["name"] not in self._changes),
                *changed.by_label.get(label, ())]

    def _others(self, changed: _Index) -> list[Policy]:
        return [*(p for name, p in self._base.others.items() if name not in self._changes),
                *changed.others.values()]

    def _changed(self) -> _Index:
        """The policies put since the index was made, indexed alike (once per change:
        a quarantine asks its copy again and again)."""
        if self._changed_index is None:
            self._changed_index = _Index(p for p in self._changes.values() if p is not None)
        return self._changed_index

    def selecting(self, labels: Mapping[str, str]) -> list[Policy]:
        """The policies that select a pod with these labels."""
        changed = self._changed()
        found = [p for label, value in labels.items() if value == "true"
                 for p in self._found(label, changed)]
        return found + [p for p in self._others(changed)
                        if selects((p.get("spec") or {}).get("podSelector") or {}, labels)]

    def by_label(self) -> dict[str, list[str]]:
        """The names of the policies found by their quarantine label, per label."""
        changed = self._changed()
        return {label: [p["metadata"]["name"] for p in found]
                for label in {**self._base.by_label, **changed.by_label}
                if (found := self._found(label, changed))}

    def tried(self) -> list[str]:
        """The names of the policies tried against a pod's labels."""
        return [p["metadata"]["name"] for p in self._others(self._changed())]

    def __iter__(self) -> Iterator[Policy]:
        for name, policy in self._base.by_name.items():
            if name not in self._changes:
                yield policy
        for changed in self._changes.values():
            if changed is not None:
                yield changed

    def __len__(self) -> int:
        return len(self._base.by_name) + sum(
            (policy is not None) - (name in self._base.by_name)
            for name, policy in self._changes.items())


# --- judging rules -------------------------------------------------------------------------


def _labels(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "(all)"


def _peer_namespaces(peer: Obj, policy_namespace: str, world: World) -> list[str] | None:
    """The namespaces a peer reaches into; None when it is not namespace-bound (ipBlock)."""
    if "ipBlock" in peer:
        return None
    ns_selector = peer.get("namespaceSelector")
    if ns_selector is None:
        return [policy_namespace]
    return sorted(n for n, labels in world.namespaces.items() if selects(ns_selector, labels))


def _peer_pods(peer: Obj, namespace: str, world: World) -> list[PodView]:
    return [p for p in world.pods_in(namespace)
            if selects(peer.get("podSelector") or {}, p.labels)]


def _ports_within_dns(ports: Sequence[Obj], destinations: Iterable[PodView]) -> bool:
    """Whether every port entry allows nothing but UDP/TCP 53 on these destinations."""
    if not ports:
        return False  # every port
    for entry in ports:
        protocol = entry.get("protocol") or "TCP"
        port = entry.get("port")
        if port is None:
            return False  # every port of the protocol
        if isinstance(port, str) and not port.isdigit():
            for pod in destinations:
                resolved = pod.named_ports.get(port)
                if resolved is not None and resolved != (protocol, 53):
                    return False
            continue
        if (protocol, int(port)) not in DNS_PORTS or entry.get("endPort") not in (None, int(port)):
            return False
    return True


def _describe_rule(rule: Obj, direction: Direction, policy_namespace: str) -> str:
    peers = rule.get("from" if direction == "ingress" else "to") or []
    texts = []
    for peer in peers:
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            excepted = f" except {', '.join(block['except'])}" if block.get("except") else ""
            texts.append(f"{block.get('cidr')}{excepted}")
            continue
        ns = peer.get("namespaceSelector")
        pod = peer.get("podSelector")
        where = (f"namespace {policy_namespace}" if ns is None
                 else "every namespace" if not ns else f"namespaces {_selector_text(ns)}")
        texts.append(f"{'pods ' + _selector_text(pod) if pod else 'every pod'} in {where}")
    who = "; ".join(texts) or "anywhere"
    ports = rule.get("ports") or []
    port_text = ", ".join(
        f"{p.get('protocol') or 'TCP'} {p.get('port', 'every port')}"
        + (f"-{p['endPort']}" if p.get("endPort") else "") for p in ports) or "every port"
    arrow = "from" if direction == "ingress" else "to"
    return f"{direction} {arrow} {who} on {port_text}"


def _selector_text(selector: Obj) -> str:
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    parts += [f"{r['key']} {r['operator']} {','.join(r.get('values') or ())}".rstrip()
              for r in selector.get("matchExpressions") or ()]
    return ",".join(parts) or "(all)"


def _names_namespace(selector: Obj | None, namespace: str | None) -> bool:
    """Whether a namespaceSelector selects exactly the namespace ``namespace``, by the
    name label the API server sets on every namespace and nobody can change."""
    return namespace is not None and selector == {"matchLabels": {NAME_LABEL: namespace}}


def is_allowance(rule: Obj, direction: Direction, allowances: Allowances) -> bool:
    """Whether a rule is, by its shape alone, within the allowances: ingress from the
    forensics namespace named by name, or egress to the DNS pods (the allowance's own
    selector, in the DNS namespace named by name) on port 53. Such a rule (the
    quarantine's own are built so) is judged without looking at any namespace or pod:
    what it allows does not depend on them."""
    peers = rule.get("from" if direction == "ingress" else "to") or []
    if not peers or any(set(peer) - {"namespaceSelector", "podSelector"} for peer in peers):
        return False
    if direction == "ingress":
        return all(_names_namespace(peer.get("namespaceSelector"),
                                    allowances.forensics_namespace) for peer in peers)
    # Every pod the peer selects carries the DNS labels (any pod, when they are none).
    dns_pods: list[Obj | None] = [{"matchLabels": dict(allowances.dns_selector)}] \
        if allowances.dns_selector else [None, {}, {"matchLabels": {}}]
    ports = rule.get("ports") or []
    return bool(ports) and all(
        _names_namespace(peer.get("namespaceSelector"), allowances.dns_namespace)
        and peer.get("podSelector") in dns_pods for peer in peers) and all(
        isinstance(entry.get("port"), int)
        and (entry.get("protocol") or "TCP", entry["port"]) in DNS_PORTS
        and entry.get("endPort") in (None, entry["port"]) for entry in ports)


def rule_within(rule: Obj, direction: Direction, policy_namespace: str,
                allowances: Allowances, world: World) -> bool:
    """Whether a rule allows nothing beyond the allowances: by its shape when it is
    an allowance's, else judged over ``world``."""
    return is_allowance(rule, direction, allowances) \
        or judged_within(rule, direction, policy_namespace, allowances, world)


def judged_within(rule: Obj, direction: Direction, policy_namespace: str,
                  allowances: Allowances, world: World) -> bool:
    """Whether a rule allows nothing beyond the allowances, judged over the namespaces
    and pods of ``world``."""
    peers = rule.get("from" if direction == "ingress" else "to") or []
    if not peers:
        return False  # from or to anything, including outside the cluster
    if direction == "ingress":
        for peer in peers:
            namespaces = _peer_namespaces(peer, policy_namespace, world)
            if namespaces is None:
                return False
            for namespace in namespaces:
                if namespace == allowances.forensics_namespace:
                    continue  # every pod there may reach the quarantined pod, on any port
                if "podSelector" not in peer or _peer_pods(peer, namespace, world):
                    return False
        return True
    destinations: list[PodView] = []
    for peer in peers:
        namespaces = _peer_namespaces(peer, policy_namespace, world)
        if namespaces is None:
            return False
        if "podSelector" not in peer and (
                set(namespaces) - {allowances.dns_namespace} or allowances.dns_selector):
            # Whole namespaces: every pod that will ever run there, which only an
            # allowance of the whole DNS namespace covers.
            return False
        for namespace in namespaces:
            pods = _peer_pods(peer, namespace, world)
            if namespace != allowances.dns_namespace:
                if pods:
                    return False
                continue
            if any(not selects({"matchLabels": dict(allowances.dns_selector)}, p.labels)
                   for p in pods):
                return False
            destinations += pods
    return _ports_within_dns(rule.get("ports") or [], destinations)


def excess(pod: PodView, policies: Sequence[Obj], own_policy: str, allowances: Allowances,
           world: World) -> list[Finding]:
    """Every flow the policies allow this quarantined pod beyond its allowances; empty
    when the quarantine holds."""
    if pod.host_network:
        return [Finding(pod.name, d, None, f"{d}: the pod is on the host's network, where "
                        "no NetworkPolicy applies") for d in DIRECTIONS]
    findings = []
    for direction in DIRECTIONS:
        selecting = [p for p in policies if selects_pod(p, pod, direction)]
        names = {p["metadata"]["name"] for p in selecting}
        if own_policy not in names:
            findings.append(Finding(pod.name, direction, None,
                                    f"all {direction}: the quarantine policy {own_policy} "
                                    f"does not select the pod"))
            continue
        for policy in selecting:
            name = policy["metadata"]["name"]
            namespace = policy["metadata"]["namespace"]
            for rule in (policy.get("spec") or {}).get(direction) or []:
                if not rule_within(rule, direction, namespace, allowances, world):
                    findings.append(Finding(pod.name, direction, name,
                                            _describe_rule(rule, direction, namespace)))
    return findings


def adds_nothing(other: Obj, own: Obj) -> bool:
    """Whether a policy can open nothing that ``own`` does not already open to the
    pods both select: each of its rules, in each direction, is one of ``own``'s. Two
    quarantines of one pod by the same playbook are so: neither widens the other."""
    other_spec, own_spec = other.get("spec") or {}, own.get("spec") or {}
    return all(rule in (own_spec.get(direction) or [])
               for direction in DIRECTIONS for rule in other_spec.get(direction) or [])


# --- the exclusion term ----------------------------------------------------------------------


def exclusion_term(key: str) -> dict[str, str]:
    return {"key": quarantine_label(key), "operator": "DoesNotExist"}


def has_exclusion(policy: Obj, key: str) -> bool:
    selector = (policy.get("spec") or {}).get("podSelector") or {}
    return exclusion_term(key) in (selector.get("matchExpressions") or [])


def with_exclusion(selector: Obj, key: str) -> dict[str, Any]:
    """The selector, no longer selecting pods that carry the quarantine label."""
    expressions = list(selector.get("matchExpressions") or [])
    if exclusion_term(key) not in expressions:
        expressions.append(exclusion_term(key))
    return {**selector, "matchExpressions": expressions}


def without_exclusion(selector: Obj, key: str) -> dict[str, Any]:
    """The selector with this quarantine's term removed, and nothing else changed."""
    expressions = [e for e in selector.get("matchExpressions") or [] if e != exclusion_term(key)]
    updated = {k: v for k, v in selector.items() if k != "matchExpressions"}
    if expressions:
        updated["matchExpressions"] = expressions
    return updated


def to_exclude(findings: Iterable[Finding], policies: PolicySet, own_policy: str
               ) -> list[str]:
    """The policies whose rules defeat the quarantine and may be given the exclusion
    term: not the quarantine's own, not another quarantine's."""
    names = {f.policy for f in findings if f.policy not in (None, own_policy)}
    return sorted(n for n in names if n is not None and (p := policies.get(n)) is not None
                  and not is_quarantine_policy(p))
