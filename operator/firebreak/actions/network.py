"""isolateNetwork: pod-precise quarantine with a NetworkPolicy.

The target pods get a quarantine label naming the incident, and one NetworkPolicy
selecting that label denies all ingress and egress except what the playbook
allows (DNS to the cluster DNS service; ingress from a forensics namespace). The
policy is created *before* the pods are labelled, so a pod is never labelled and
unprotected.

NetworkPolicies are additive: a deny-all cannot cancel another policy's allow. The
step therefore looks for other policies that select the quarantined pods and allow
traffic, and records each as a warning for a person to act on.

``detach`` takes a pod out of its ReplicaSet's selector: the controller starts a
replacement while the quarantined pod stays for forensics. Revert restores the
labels, and the controller scales back to the desired count by itself.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..api import ActionName
from ..kube import Conflict, Invalid, NotFound, create, delete, raw, read_raw
from ..selectors import selects
from .base import (
    INCIDENT_LABEL,
    INCIDENT_NAMESPACE_LABEL,
    MANAGED_BY,
    Action,
    ActionContext,
    ActionRefused,
    Applied,
    Params,
    Prepared,
    Record,
    RecordPart,
    ref,
)
from .workloads import DETACHED_FROM, Obj, controller_of, read_object, target_pods

# One label per incident (value "true"), so that two incidents quarantining the same
# pod never overwrite each other, and a revert removes only its own.
QUARANTINE_PREFIX = "quarantine.firebreak.dev/"
MANAGED_BY_KEY = "app.kubernetes.io/managed-by"


def quarantine_label(key: str) -> str:
    return f"{QUARANTINE_PREFIX}{key}"
DETACHED_SUFFIX = "-quarantined"


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


class IsolateNetworkRecord(Record):
    namespace: str
    policy: str
    pods: list[QuarantinedPod]


def policy_name(ctx: ActionContext) -> str:
    return f"firebreak-quarantine-{ctx.incident.key}"


def build_isolation_policy(
    name: str, namespace: str, incident_key: str, params: IsolateNetworkParams,
    labels: dict[str, str],
) -> dict[str, Any]:
    """The NetworkPolicy that cuts quarantined pods off, but for the allowances."""
    ingress: list[dict[str, Any]] = []
    if params.forensics_namespace:
        ingress.append({"from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": params.forensics_namespace}}}]})
    egress: list[dict[str, Any]] = []
    if params.allow_dns:
        egress.append({
            "to": [{
                "namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": params.dns_namespace}},
                "podSelector": {"matchLabels": dict(params.dns_selector)},
            }],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        })
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "podSelector": {"matchLabels": {quarantine_label(incident_key): "true"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


def permissive_overlaps(
    policies: list[Obj], pods: dict[str, dict[str, str]], own_policy: str
) -> list[str]:
    """Warnings for other policies that select a quarantined pod and allow traffic.

    ``pods`` maps pod name to its labels once quarantined.
    """
    warnings = []
    for policy in policies:
        name = policy["metadata"]["name"]
        if name == own_policy:
            continue
        spec = policy.get("spec", {})
        types = spec.get("policyTypes") or ["Ingress"]
        allows = [t for t in ("Ingress", "Egress")
                  if t in types and spec.get(t.lower())]
        if not allows:
            continue
        selected = sorted(p for p, labels in pods.items()
                          if selects(spec.get("podSelector") or {}, labels))
        if selected:
            warnings.append(
                f"NetworkPolicy {name} also selects {', '.join(selected)} and allows "
                f"{' and '.join(a.lower() for a in allows)}; policies are additive, so the "
                f"quarantine does not block that traffic"
            )
    return warnings


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


class IsolateNetwork(Action):
    name = ActionName.isolate_network
    params_model = IsolateNetworkParams
    record_model = IsolateNetworkRecord

    def prepare(self, ctx: ActionContext, params: IsolateNetworkParams) -> Prepared:
        pods = target_pods(ctx.kube, ctx.target, params.scope)
        namespace = pods[0]["metadata"]["namespace"] if pods else ctx.target.namespace
        record_pods: list[QuarantinedPod] = []
        for pod in pods:
            entry = QuarantinedPod(name=pod["metadata"]["name"], uid=pod["metadata"]["uid"])
            owner = controller_of(pod)
            if params.detach and owner is not None and owner["kind"] == "ReplicaSet":
                rs = read_object(ctx.kube, "ReplicaSet", namespace, owner["name"])
                if rs is not None:
                    changes = _detach_labels(pod, rs["spec"].get("selector") or {})
                    entry = entry.model_copy(update={
                        "detach": {k: (pod["metadata"]["labels"][k], v)
                                   for k, v in changes.items()},
                        "detached_from": owner["name"]})
            record_pods.append(entry)

        policy = policy_name(ctx)
        after = {}
        for pod, entry in zip(pods, record_pods, strict=True):
            labels = dict(pod["metadata"].get("labels") or {})
            labels.update({k: new for k, (_, new) in (entry.detach or {}).items()})
            labels[quarantine_label(ctx.incident.key)] = "true"
            after[entry.name] = labels
        # Other incidents' quarantine policies allow no more than ours: leave them out
        # (server-side, so the list stays short however many incidents there are).
        others = raw(ctx.kube.networking.list_namespaced_network_policy, namespace,
                     label_selector=f"{MANAGED_BY_KEY}!={MANAGED_BY[MANAGED_BY_KEY]}")["items"]
        warnings = permissive_overlaps(others, after, policy)

        allowances = []
        if params.allow_dns:
            allowances.append("DNS egress")
        if params.forensics_namespace:
            allowances.append(f"ingress from namespace {params.forensics_namespace}")
        names = ", ".join(e.name for e in record_pods) or "no pods"
        message = (
            f"quarantine {names} with NetworkPolicy {namespace}/{policy} denying all traffic"
            + (f" except {' and '.join(allowances)}" if allowances else "")
            + ("; detach from ReplicaSet" if params.detach else "")
        )
        return Prepared(
            message=message,
            objects=[ref("NetworkPolicy", policy, namespace)]
            + [ref("Pod", e.name, namespace) for e in record_pods],
            record=IsolateNetworkRecord(namespace=namespace, policy=policy, pods=record_pods),
            warnings=warnings,
        )

    def apply(self, ctx: ActionContext, params: IsolateNetworkParams,
              record: IsolateNetworkRecord) -> Applied:
        namespace = record.namespace
        body = build_isolation_policy(record.policy, namespace, ctx.incident.key, params,
                                      ctx.managed_labels())
        if create(ctx.kube.networking.create_namespaced_network_policy, namespace, body) is None:
            self._check_owner(ctx, namespace, record.policy)
        labelled, gone = [], []
        for entry in record.pods:
            labels = {quarantine_label(ctx.incident.key): "true"}
            labels.update({k: new for k, (_, new) in (entry.detach or {}).items()})
            annotations = ({DETACHED_FROM: entry.detached_from}
                           if entry.detached_from is not None else {})
            # The uid makes the patch a precondition: a pod replaced under the same name
            # (a StatefulSet's) is never quarantined by mistake. Re-applying writes the
            # same labels, which the API server stores as no change at all.
            patch = {"metadata": {"uid": entry.uid, "labels": labels,
                                  "annotations": annotations}}
            try:
                raw(ctx.kube.core.patch_namespaced_pod, entry.name, namespace, patch)
            except (NotFound, Conflict, Invalid):  # gone, or replaced under the same name
                gone.append(entry.name)
                continue
            labelled.append(entry.name)
        message = (f"NetworkPolicy {namespace}/{record.policy} isolates "
                   f"{', '.join(labelled) or 'no pods'}")
        if gone:
            message += f"; gone before labelling: {', '.join(gone)}"
        return Applied(message=message, record=record)

    @staticmethod
    def _check_owner(ctx: ActionContext, namespace: str, name: str) -> None:
        """A policy of that name already exists: fine if this incident made it (a
        re-apply), refused if another incident with the same name did."""
        existing = read_raw(ctx.kube.networking.read_namespaced_network_policy, name, namespace)
        labels = (existing or {}).get("metadata", {}).get("labels") or {}
        owner = labels.get(INCIDENT_NAMESPACE_LABEL)
        if existing is not None and owner not in (None, ctx.incident.namespace):
            raise ActionRefused(
                f"NetworkPolicy {namespace}/{name} belongs to incident {owner}/"
                f"{labels.get(INCIDENT_LABEL)}, an incident of the same name in another "
                f"namespace; rename one of the incidents")

    def revert(self, ctx: ActionContext, record: IsolateNetworkRecord) -> str:
        namespace = record.namespace
        released = []
        for entry in record.pods:
            current = read_raw(ctx.kube.core.read_namespaced_pod, entry.name, namespace)
            if current is None or current["metadata"]["uid"] != entry.uid:
                continue
            labels: dict[str, str | None] = {quarantine_label(ctx.incident.key): None}
            labels.update({k: old for k, (old, _) in (entry.detach or {}).items()})
            annotations: dict[str, str | None] = (
                {DETACHED_FROM: None} if entry.detached_from is not None else {})
            if _differs(current, labels, annotations):
                raw(ctx.kube.core.patch_namespaced_pod, entry.name, namespace,
                    {"metadata": {"labels": labels, "annotations": annotations}})
            released.append(entry.name)
        delete(ctx.kube.networking.delete_namespaced_network_policy, record.policy, namespace)
        return (f"removed NetworkPolicy {namespace}/{record.policy}; released "
                f"{', '.join(released) or 'no pods (all gone)'}")
