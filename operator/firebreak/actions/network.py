"""isolateNetwork: a quarantine that holds, whatever else the namespace allows.

A quarantine has three parts (DESIGN.md, "Containment means verified"):

1. **Its own policy.** One NetworkPolicy per incident selects the pods carrying the
   incident's quarantine label and denies all ingress and egress except what the
   playbook allows (DNS to the cluster DNS; ingress from a forensics namespace). It
   carries the incident's UID in an annotation: a policy of the same name made by
   anyone else is never taken for ours.
2. **Exclusion from every other policy that would open it.** NetworkPolicies are
   additive, so a deny cannot cancel another policy's allow. Each other policy that
   selects a quarantined pod and allows more than the allowances gets one term in its
   ``podSelector``: ``quarantine.firebreak.dev/<incident> DoesNotExist``. The term is
   added before the pods are labelled, so the label moves each pod out of those
   policies and into the quarantine in one write; it selects nothing once the label
   is gone, and revert removes exactly that term (from every policy that carries it,
   whoever changed the policy since), leaving everything else as it is.
3. **A verdict.** ``firebreak.isolation`` judges, from the policies, pods and
   namespaces the operator sees, what each quarantined pod can still send and
   receive; the step holds only when that is exactly the allowances.

``hold`` does all three again: after a NetworkPolicy in the namespace changes (a
late allow policy, a GitOps controller putting a policy back), a quarantined pod
lost its label, or (``scope: workload``) the workload got new pods.

``detach`` takes a pod out of its ReplicaSet's selector: the controller starts a
replacement while the quarantined pod stays for forensics. Revert restores the
labels, and the controller scales back to the desired count by itself.

What a NetworkPolicy cannot do is refused or said: a pod on the host's network is
refused; connections open before the quarantine are not cut by it (the dataplane
keeps tracked connections; see the README).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from ..api import ActionName, TargetKind
from ..isolation import (
    NAME_LABEL,
    QUARANTINE_PREFIX,
    Allowances,
    Finding,
    PodView,
    PolicySet,
    World,
    excess,
    has_exclusion,
    quarantine_label,
    to_exclude,
    with_exclusion,
    without_exclusion,
)
from ..kube import (
    STRATEGIC_MERGE_PATCH,
    Conflict,
    Invalid,
    Kube,
    NotFound,
    path,
)
from .base import (
    INCIDENT_LABEL,
    INCIDENT_NAMESPACE_LABEL,
    Action,
    ActionContext,
    ActionRefused,
    Applied,
    Held,
    Params,
    Prepared,
    Record,
    RecordPart,
    Verdict,
    ref,
)
from .workloads import (
    DETACHED_FROM,
    Obj,
    controller_of,
    live_pods,
    read_object,
    target_pods,
)

__all__ = ["QUARANTINE_PREFIX", "IsolateNetwork", "quarantine_label"]

NETWORKING = "networking.k8s.io/v1"
OWNER_ANNOTATION = "firebreak.dev/incident-uid"
DETACHED_SUFFIX = "-quarantined"
EXCLUDE_ATTEMPTS = 5
CONNECTIONS_NOTE = ("connections opened before the quarantine are not cut by a "
                    "NetworkPolicy")


class IsolateNetworkParams(Params):
    scope: Literal["pod", "workload"] = Field(
        default="pod",
        description="pod: only the target pod; workload: every replica of its workload.")
    allow_dns: bool = Field(default=True, alias="allowDNS",
                            description="Allow egress to the cluster DNS service.")
    dns_namespace: str = Field(default="kube-system", alias="dnsNamespace")
    dns_selector: dict[str, str] = Field(default_factory=lambda: {"k8s-app": "kube-dns"},
                                         alias="dnsSelector")
    forensics_namespace: str | None = Field(
        default=None, alias="forensicsNamespace",
        description="Allow ingress from pods in this namespace (for investigators' tools).")
    detach: bool = Field(
        default=False,
        description="Take the pods out of their ReplicaSet so a replacement starts.")


class QuarantinedPod(RecordPart):
    """A pod to quarantine, by uid, and the label changes that detach it (each key:
    [value before, value set])."""

    name: str
    uid: str
    detach: dict[str, tuple[str, str]] | None = None
    detached_from: str | None = None


class ExcludedPolicy(RecordPart):
    """Another team's policy given the exclusion term, as it was right after."""

    name: str
    resource_version: str | None = None


class IsolateNetworkRecord(Record):
    namespace: str
    policy: str
    pods: list[QuarantinedPod]
    # Absent in records of releases before the exclusion existed.
    excluded: list[ExcludedPolicy] | None = None


def policy_name(ctx: ActionContext) -> str:
    return f"firebreak-quarantine-{ctx.incident.key}"


def build_isolation_policy(
    name: str, namespace: str, incident_key: str, params: IsolateNetworkParams,
    labels: dict[str, str], incident_uid: str = "",
) -> dict[str, Any]:
    """The NetworkPolicy that cuts quarantined pods off, but for the allowances."""
    ingress: list[dict[str, Any]] = []
    if params.forensics_namespace:
        ingress.append({"from": [{"namespaceSelector": {"matchLabels": {
            NAME_LABEL: params.forensics_namespace}}}]})
    egress: list[dict[str, Any]] = []
    if params.allow_dns:
        egress.append({
            "to": [{
                "namespaceSelector": {"matchLabels": {
                    NAME_LABEL: params.dns_namespace}},
                "podSelector": {"matchLabels": dict(params.dns_selector)},
            }],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        })
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {OWNER_ANNOTATION: incident_uid}},
        "spec": {
            "podSelector": {"matchLabels": {quarantine_label(incident_key): "true"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


def allowances(params: IsolateNetworkParams) -> Allowances:
    return Allowances(
        forensics_namespace=params.forensics_namespace,
        dns_namespace=params.dns_namespace if params.allow_dns else None,
        dns_selector=dict(params.dns_selector) if params.allow_dns else {})


def _detach_labels(pod: Obj, owner_selector: dict[str, Any]) -> dict[str, str]:
    """Label changes that take the pod out of its ReplicaSet's selector."""
    labels = pod["metadata"].get("labels") or {}
    changes = {}
    for key, value in (owner_selector.get("matchLabels") or {}).items():
        if labels.get(key) == value:
            changes[key] = f"{value}{DETACHED_SUFFIX}"[:63]
            break
    return changes


def _differs(pod: Obj, labels: dict[str, Any], annotations: dict[str, Any]) -> bool:
    """Whether a merge patch with these labels and annotations would change the pod
    (``None`` means absent)."""
    meta = pod["metadata"]
    current_labels, current_annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    return (any(current_labels.get(k) != v for k, v in labels.items())
            or any(current_annotations.get(k) != v for k, v in annotations.items()))


class _Namespaces(Mapping[str, Mapping[str, str]]):
    """Namespace labels, listed on first use: most verdicts never need them."""

    def __init__(self, kube: Kube) -> None:
        self._kube = kube
        self._loaded: dict[str, Mapping[str, str]] | None = None

    def _all(self) -> dict[str, Mapping[str, str]]:
        if self._loaded is None:
            items = self._kube.items(path("v1", "namespaces"))
            self._loaded = {n["metadata"]["name"]: n["metadata"].get("labels") or {}
                            for n in items}
        return self._loaded

    def __getitem__(self, name: str) -> Mapping[str, str]:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def _world(kube: Kube) -> World:
    """What the judge may ask about, read lazily and once: pods per namespace,
    namespace labels."""
    cache: dict[str, list[PodView]] = {}

    def pods_in(namespace: str) -> list[PodView]:
        if namespace not in cache:
            cache[namespace] = [PodView.of(p) for p in live_pods(kube, namespace)]
        return cache[namespace]

    return World(namespaces=_Namespaces(kube), pods_in=pods_in)


@dataclass
class _Quarantine:
    """One pass over a quarantine's namespace: its policies as they are, the pods as
    they will be labelled, and the exclusions made."""

    ctx: ActionContext
    params: IsolateNetworkParams
    namespace: str
    own: str
    policies: PolicySet
    pods: list[PodView]
    excluded: list[ExcludedPolicy] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    # The last findings and the pods they were found for, until a policy is replaced
    # here: a verdict right after an exclusion that changed nothing is not judged
    # again. (The policies are changed only through ``_replace`` once judged.)
    _found: tuple[list[PodView], list[Finding]] | None = field(default=None, repr=False)

    @classmethod
    def read(cls, ctx: ActionContext, params: IsolateNetworkParams, namespace: str,
             own: str, pods: Sequence[PodView]) -> _Quarantine:
        return cls(ctx, params, namespace, own, _policies(ctx, namespace), list(pods))

    def findings(self) -> list[Finding]:
        if self._found is not None and self._found[0] == self.pods:
            return self._found[1]
        world = _world(self.ctx.kube)
        # Only the policies that select a pod can open it: in a namespace of many
        # quarantines (one policy each), most select none of these pods.
        found: list[Finding] = []
        for pod in self.pods:
            found += excess(pod, self.policies.selecting(pod.labels), self.own,
                            allowances(self.params), world)
        self._found = (list(self.pods), found)
        return found

    def exclude(self) -> None:
        """Give every other policy that would open a quarantined pod the exclusion
        term (each write conditional on the version read; re-read on a race)."""
        key = self.ctx.incident.key
        for name in to_exclude(self.findings(), self.policies, self.own):
            policy = self.policies.get(name)
            assert policy is not None  # to_exclude names only policies of the set
            updated = self._patch_selector(policy, lambda s: with_exclusion(s, key))
            if updated is not None:
                self.excluded.append(ExcludedPolicy(
                    name=name, resource_version=updated["metadata"].get("resourceVersion")))
                self.changes.append(f"excluded the quarantined pods from NetworkPolicy "
                                    f"{self.namespace}/{name}")

    def _patch_selector(self, policy: dict[str, Any], change: Any) -> dict[str, Any] | None:
        name = policy["metadata"]["name"]
        for _ in range(EXCLUDE_ATTEMPTS):
            selector = (policy.get("spec") or {}).get("podSelector") or {}
            wanted = change(selector)
            if wanted == selector:
                self._replace(policy)  # as read again, when it was
                return None
            patch = [{"op": "test", "path": "/metadata/resourceVersion",
                      "value": policy["metadata"]["resourceVersion"]},
                     {"op": "replace", "path": "/spec/podSelector", "value": wanted}]
            try:
                updated = self.ctx.kube.request(
                    "PATCH", _policy_path(self.namespace, name), patch)
            except NotFound:
                return None
            except (Conflict, Invalid):  # changed since read: read again and redo
                fresh = self.ctx.kube.read(_policy_path(self.namespace,
                                                name))
                if fresh is None:
                    return None
                policy = fresh
                continue
            self._replace(updated)
            return updated
        raise ActionRefused(f"NetworkPolicy {self.namespace}/{name} kept changing while the "
                            f"quarantine tried to exclude its pods from it")

    def _replace(self, policy: dict[str, Any]) -> None:
        self.policies.put(policy)
        self._found = None

    def verdict(self) -> Verdict:
        found = self.findings()
        names = ", ".join(p.name for p in self.pods) or "no pods"
        if not found:
            # Nothing in it that changes while the verdict stands (such as how many
            # policies were judged): a check that finds the same writes nothing.
            return Verdict(True, f"{names}: no traffic but {allowances(self.params).describe()} "
                                 f"(checked against every NetworkPolicy in {self.namespace}); "
                                 f"{CONNECTIONS_NOTE}")
        shown = "; ".join(str(f) for f in found[:8])
        more = f"; {len(found) - 8} more" if len(found) > 8 else ""
        return Verdict(False, f"the quarantine does not hold: {shown}{more}")


def _policies(ctx: ActionContext, namespace: str) -> PolicySet:
    """The namespace's NetworkPolicies, a set of the caller's own: as the operator's
    watch has them, else listed."""
    seen = ctx.policies(namespace) if ctx.policies is not None else None
    if seen is not None:
        return seen
    return PolicySet(ctx.kube.items(_policy_path(namespace)))


def _policy_path(namespace: str, name: str | None = None) -> str:
    """The REST path of a namespace's NetworkPolicies, or of one."""
    return path(NETWORKING, "networkpolicies", namespace, name)


def _refuse_host_network(pods: Sequence[Obj]) -> None:
    on_host = [p["metadata"]["name"] for p in pods if (p.get("spec") or {}).get("hostNetwork")]
    if on_host:
        raise ActionRefused(
            f"a NetworkPolicy cannot isolate a pod on the host's network ({', '.join(on_host)}): "
            f"its traffic is the node's; cordon the node or delete the pod instead")


class IsolateNetwork(Action):
    name = ActionName.isolate_network
    params_model = IsolateNetworkParams
    record_model = IsolateNetworkRecord
    held = True

    def prepare(self, ctx: ActionContext, params: IsolateNetworkParams) -> Prepared:
        # The pod as intake read it a moment ago, when it did: the label goes on only
        # with its uid as a precondition, and the verdict is judged from the pod as
        # the labelling stored it.
        handed = ctx.kube.handoff.take("Pod", ctx.target.namespace or "", ctx.target.name) \
            if params.scope == "pod" and ctx.target.kind is TargetKind.pod else None
        pods = [handed] if handed is not None else target_pods(ctx.kube, ctx.target,
                                                                params.scope)
        _refuse_host_network(pods)
        namespace = pods[0]["metadata"]["namespace"] if pods else ctx.target.namespace or ""
        record_pods = [self._entry(ctx, params, pod, namespace) for pod in pods]
        policy = policy_name(ctx)
        quarantine = _Quarantine.read(ctx, params, namespace, policy, [
            _labelled(ctx, pod, entry) for pod, entry in zip(pods, record_pods, strict=True)])
        ctx.seen.update(pods={p["metadata"]["name"]: p for p in pods},
                        policies=quarantine.policies.copy())
        # Judged as if the quarantine were in place: its own policy, as it will be.
        quarantine.policies.put(build_isolation_policy(
            policy, namespace, ctx.incident.key, params, {}, ctx.incident.uid))
        to_patch = to_exclude(quarantine.findings(), quarantine.policies, policy)

        allowed = allowances(params).describe()
        names = ", ".join(e.name for e in record_pods) or "no pods"
        message = (
            f"quarantine {names} with NetworkPolicy {namespace}/{policy} denying all traffic"
            + (f" except {allowed}" if allowed != "nothing" else "")
            + (f"; exclude them from NetworkPolicies {', '.join(to_patch)}" if to_patch else "")
            + ("; detach from ReplicaSet" if params.detach else "")
        )
        return Prepared(
            message=message,
            objects=[ref("NetworkPolicy", policy, namespace)]
            + [ref("NetworkPolicy", n, namespace) for n in to_patch]
            + [ref("Pod", e.name, namespace) for e in record_pods],
            record=IsolateNetworkRecord(namespace=namespace, policy=policy, pods=record_pods),
            # Detaching records label values the first apply takes away, and an
            # exclusion's record keeps versions of other teams' policies: a fresh plan
            # would not find either again.
            replayable=not params.detach and not to_patch,
        )

    @staticmethod
    def _entry(ctx: ActionContext, params: IsolateNetworkParams, pod: Obj,
               namespace: str) -> QuarantinedPod:
        entry = QuarantinedPod(name=pod["metadata"]["name"], uid=pod["metadata"]["uid"])
        owner = controller_of(pod)
        if params.detach and owner is not None and owner["kind"] == "ReplicaSet":
            rs = read_object(ctx.kube, "ReplicaSet", namespace, owner["name"])
            if rs is not None:
                changes = _detach_labels(pod, rs["spec"].get("selector") or {})
                entry = entry.model_copy(update={
                    "detach": {k: (pod["metadata"]["labels"][k], v) for k, v in changes.items()},
                    "detached_from": owner["name"]})
        return entry

    def apply(self, ctx: ActionContext, params: IsolateNetworkParams,
              record: IsolateNetworkRecord) -> Applied:
        namespace = record.namespace
        _, own = self._ensure_policy(ctx, params, record)
        # What this run's prepare read a moment ago serves, else the API: a pod or a
        # policy that changed since is put right by ``hold`` (the policy watch).
        seen_pods = ctx.seen.pop("pods", None) or {}
        current = {e.name: seen_pods[e.name] if e.name in seen_pods
                   else ctx.kube.read(path("v1", "pods", namespace, e.name))
                   for e in record.pods}
        live = [(e, p) for e, p in ((e, current[e.name]) for e in record.pods)
                if p is not None and p["metadata"]["uid"] == e.uid]
        _refuse_host_network([p for _, p in live])
        views = [_labelled(ctx, p, e) for e, p in live]
        seen_policies = ctx.seen.pop("policies", None)
        if seen_policies is not None and own is not None:
            seen_policies.put(own)
            quarantine = _Quarantine(ctx, params, namespace, record.policy, seen_policies,
                                     views)
        else:
            quarantine = _Quarantine.read(ctx, params, namespace, record.policy, views)
            # Resuming a recorded decision: a crash may have come between an exclusion
            # and its record. A policy carrying this incident's term is one of ours.
            quarantine.excluded += [
                ExcludedPolicy(name=p["metadata"]["name"],
                               resource_version=p["metadata"].get("resourceVersion"))
                for p in quarantine.policies if has_exclusion(p, ctx.incident.key)]
        # Out of every other policy first: labelling then moves each pod from those
        # policies into the quarantine in one write.
        quarantine.exclude()
        live_uids = {e.uid for e, _ in live}
        labelled, gone = [], [e.name for e in record.pods if e.uid not in live_uids]
        stored = []
        for entry, _ in live:
            pod = self._label(ctx, namespace, entry)
            if pod is not None:
                labelled.append(entry.name)
                stored.append(PodView.of(pod))
            else:
                gone.append(entry.name)
        # Judged as the labelling stored them: their labels of this moment. A pod
        # relabelled since it was read may now be selected by other policies: those are
        # excluded too, before the verdict.
        judged = {p.name: p.labels for p in quarantine.pods}
        quarantine.pods = stored
        if any(judged.get(p.name) != p.labels for p in stored):
            quarantine.exclude()
        record = record.model_copy(update={"excluded": _merge(record.excluded,
                                                              quarantine.excluded)})
        message = (f"NetworkPolicy {namespace}/{record.policy} isolates "
                   f"{', '.join(labelled) or 'no pods'}")
        if record.excluded:
            message += (f"; excluded from NetworkPolicies "
                        f"{', '.join(e.name for e in record.excluded)}")
        if gone:
            message += f"; gone before labelling: {', '.join(gone)}"
        return Applied(message=message, record=record, verdict=quarantine.verdict())

    def hold(self, ctx: ActionContext, params: IsolateNetworkParams,
             record: IsolateNetworkRecord) -> Held:
        namespace = record.namespace
        changes = []
        # One listing serves both: whether the quarantine's own policy is there as made,
        # and the other policies to judge it against.
        policies = _policies(ctx, namespace)
        restored, own = self._ensure_policy(ctx, params, record, restore=True,
                                            listed=(policies.get(record.policy),))
        if restored:
            changes.append(f"restored NetworkPolicy {namespace}/{record.policy}, which had been "
                           f"deleted or changed")
        if own is not None:
            policies.put(own)
        else:
            policies.discard(record.policy)
        entries = list(record.pods)
        pods: dict[str, Obj] = {}
        label = quarantine_label(ctx.incident.key)
        swept = (ctx.listed_pods or {}).get(namespace)
        if swept is not None:  # the namespace's pods, listed once for all its quarantines
            labelled = [p for p in swept if label in (p["metadata"].get("labels") or {})]
        else:
            labelled = ctx.kube.items(path("v1", "pods", namespace),
                                      query={"labelSelector": label})
        for pod in labelled:
            pods[pod["metadata"]["uid"]] = pod
        for entry in entries:
            if entry.uid not in pods:
                # Not labelled, or not there: read again, also after a sweep's listing,
                # which may be older than this quarantine's label (a label is put back,
                # and said to be, only when it is gone).
                found = ctx.kube.read(path("v1", "pods", namespace, entry.name))
                if found is not None and found["metadata"]["uid"] == entry.uid \
                        and not found["metadata"].get("deletionTimestamp"):
                    pods[entry.uid] = found
        if params.scope == "workload":
            # The workload's pods of the moment, those created since included.
            try:
                current = target_pods(ctx.kube, ctx.target, "workload")
            except ActionRefused:
                current = []
            known = {e.uid for e in entries}
            for pod in current:
                if pod["metadata"]["uid"] not in known:
                    entries.append(self._entry(ctx, params, pod, namespace))
                    pods[pod["metadata"]["uid"]] = pod
                    changes.append(f"quarantined {pod['metadata']['name']}, a new pod of the "
                                   f"workload")
        live = [(e, pods[e.uid]) for e in entries if e.uid in pods]
        quarantine = _Quarantine(ctx, params, namespace, record.policy, policies,
                                 [_labelled(ctx, p, e) for e, p in live])
        quarantine.exclude()
        changes += quarantine.changes
        for entry, pod in live:
            if (pod["metadata"].get("labels") or {}).get(quarantine_label(ctx.incident.key)) \
                    != "true":
                self._label(ctx, namespace, entry)
                if entry.uid in {e.uid for e in record.pods}:
                    changes.append(f"put the quarantine label back on {entry.name}")
        verdict = quarantine.verdict()
        if any((p.get("spec") or {}).get("hostNetwork") for _, p in live):
            verdict = Verdict(False, f"{verdict.message}; a pod on the host's network cannot "
                                     f"be isolated by a NetworkPolicy")
        updated = record.model_copy(update={
            "pods": entries, "excluded": _merge(record.excluded, quarantine.excluded)})
        return Held(record=updated, changes=changes, verdict=verdict)

    def _ensure_policy(self, ctx: ActionContext, params: IsolateNetworkParams,
                       record: IsolateNetworkRecord, restore: bool = False,
                       listed: tuple[Obj | None] | None = None) -> tuple[bool, Obj | None]:
        """Create the quarantine policy, or check that the one there is ours (by the
        incident's UID, which no one else can give it). With ``restore``, put back a
        policy that was deleted or edited. ``listed``: the policy as a listing just
        found it (``(None,)``: not there), so that it is not read again. Returns whether
        anything was written, and the policy as stored (None when not known)."""
        namespace = record.namespace
        body = build_isolation_policy(record.policy, namespace, ctx.incident.key, params,
                                      ctx.managed_labels(), ctx.incident.uid)
        existing = listed[0] if listed is not None else None
        if existing is None:
            created = ctx.kube.create(_policy_path(namespace), body)
            if created is not None:
                return True, created
            existing = ctx.kube.read(_policy_path(namespace,
                                          record.policy))
        if existing is None:
            return False, None
        owner = (existing["metadata"].get("annotations") or {}).get(OWNER_ANNOTATION)
        if owner != ctx.incident.uid:
            labels = existing["metadata"].get("labels") or {}
            other = labels.get(INCIDENT_NAMESPACE_LABEL)
            whose = (f"belongs to incident {other}/{labels.get(INCIDENT_LABEL)}, an incident "
                     f"of the same name in another namespace; rename one of the incidents"
                     if other and other != ctx.incident.namespace
                     else "was not made by this incident")
            raise ActionRefused(f"NetworkPolicy {namespace}/{record.policy} {whose}")
        if restore and _pruned(existing.get("spec")) != _pruned(body["spec"]):
            restored = ctx.kube.request(
                "PATCH", _policy_path(namespace, record.policy),
                [{"op": "test", "path": "/metadata/resourceVersion",
                  "value": existing["metadata"]["resourceVersion"]},
                 {"op": "replace", "path": "/spec", "value": body["spec"]}])
            return True, restored
        return False, existing

    @staticmethod
    def _label(ctx: ActionContext, namespace: str, entry: QuarantinedPod) -> Obj | None:
        """Put the quarantine label on; the pod as stored, or None when it is gone."""
        labels = {quarantine_label(ctx.incident.key): "true"}
        labels.update({k: new for k, (_, new) in (entry.detach or {}).items()})
        annotations = ({DETACHED_FROM: entry.detached_from}
                       if entry.detached_from is not None else {})
        # The uid makes the patch a precondition: a pod replaced under the same name
        # (a StatefulSet's) is never quarantined by mistake. Re-applying writes the
        # same labels, which the API server stores as no change at all.
        patch = {"metadata": {"uid": entry.uid, "labels": labels, "annotations": annotations}}
        try:
            return ctx.kube.request("PATCH", path("v1", "pods", namespace, entry.name), patch,
                                    content_type=STRATEGIC_MERGE_PATCH)
        except (NotFound, Conflict, Invalid):  # gone, or replaced under the same name
            return None

    def revert(self, ctx: ActionContext, record: IsolateNetworkRecord) -> str:
        namespace = record.namespace
        released = []
        for entry in record.pods:
            current = ctx.kube.read(path("v1", "pods", namespace, entry.name))
            if current is None or current["metadata"]["uid"] != entry.uid:
                continue
            labels: dict[str, str | None] = {quarantine_label(ctx.incident.key): None}
            labels.update({k: old for k, (old, _) in (entry.detach or {}).items()})
            annotations: dict[str, str | None] = (
                {DETACHED_FROM: None} if entry.detached_from is not None else {})
            if _differs(current, labels, annotations):
                ctx.kube.request("PATCH", path("v1", "pods", namespace, entry.name),
                                 {"metadata": {"labels": labels, "annotations": annotations}},
                                 content_type=STRATEGIC_MERGE_PATCH)
            released.append(entry.name)
        restored, changed = self._remove_exclusions(ctx, record)
        ctx.kube.remove(_policy_path(namespace, record.policy))
        message = (f"removed NetworkPolicy {namespace}/{record.policy}; released "
                   f"{', '.join(released) or 'no pods (all gone)'}")
        if restored:
            message += f"; removed the exclusion from NetworkPolicies {', '.join(restored)}"
        if changed:
            message += (f" ({', '.join(changed)} changed by others since: only the exclusion "
                        f"term was removed, their changes are kept)")
        return message

    @staticmethod
    def _remove_exclusions(ctx: ActionContext, record: IsolateNetworkRecord
                           ) -> tuple[list[str], list[str]]:
        """Take this incident's term out of every policy in the namespace that carries
        it (recorded or not: a crash may have come between a patch and its record)."""
        namespace, key = record.namespace, ctx.incident.key
        policies = ctx.kube.items(_policy_path(namespace))
        versions = {e.name: e.resource_version for e in record.excluded or ()}
        quarantine = _Quarantine(ctx, IsolateNetworkParams(), namespace, record.policy,
                                 PolicySet(policies), [])
        restored, changed = [], []
        for policy in policies:
            name = policy["metadata"]["name"]
            if not has_exclusion(policy, key):
                continue
            before = policy["metadata"].get("resourceVersion")
            if quarantine._patch_selector(policy, lambda s: without_exclusion(s, key)) is None:
                continue
            restored.append(name)
            if name in versions and versions[name] != before:
                changed.append(name)
        return restored, changed


def _labelled(ctx: ActionContext, pod: Obj, entry: QuarantinedPod) -> PodView:
    """The pod as the quarantine will leave it: labelled, detached."""
    view = PodView.of(pod)
    labels = dict(view.labels)
    labels.update({k: new for k, (_, new) in (entry.detach or {}).items()})
    labels[quarantine_label(ctx.incident.key)] = "true"
    return PodView(view.namespace, view.name, labels, view.named_ports, view.host_network)


def _pruned(value: Any) -> Any:
    """For comparing a stored object with the one built: the API server drops empty
    lists and maps when it stores them."""
    if isinstance(value, dict):
        pruned = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [], None)}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _merge(old: Sequence[ExcludedPolicy] | None, new: Sequence[ExcludedPolicy]
           ) -> list[ExcludedPolicy] | None:
    merged = {e.name: e for e in old or ()}
    merged.update({e.name: e for e in new})
    return [merged[name] for name in sorted(merged)] or None
