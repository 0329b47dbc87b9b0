"""Finding what a target stands for: its pods, its owners, the workload at the top.

A signal usually names a pod; playbooks often act on the workload that owns it
(ReplicaSet -> Deployment). Objects are handled as the API's JSON (dicts).
"""

from __future__ import annotations

from typing import Any

from ..api import Target, TargetKind
from ..kube import Kube, path
from ..selectors import to_query
from .base import ActionRefused

Obj = dict[str, Any]


# Where each kind a target may be is served: (apiVersion, plural).
RESOURCES = {
    "Pod": ("v1", "pods"),
    "Deployment": ("apps/v1", "deployments"),
    "StatefulSet": ("apps/v1", "statefulsets"),
    "DaemonSet": ("apps/v1", "daemonsets"),
    "ReplicaSet": ("apps/v1", "replicasets"),
    "Job": ("batch/v1", "jobs"),
}


def read_object(kube: Kube, kind: str, namespace: str | None, name: str,
                **options: Any) -> Obj | None:
    """The object, or None when it does not exist; ``options`` go to ``kube.call``
    (``retry_for``, ``_request_timeout``)."""
    if kind == "Node":
        return kube.read(path("v1", "nodes", name=name), **options)
    served = RESOURCES.get(kind)
    if served is None or namespace is None:
        return None
    return kube.read(path(*served, namespace, name), **options)


def read_target(kube: Kube, target: Target) -> Obj:
    obj = read_object(kube, target.kind.value, target.namespace, target.name)
    if obj is None:
        where = f" in namespace {target.namespace}" if target.namespace else ""
        raise ActionRefused(f"{target.kind.value} {target.name}{where} does not exist")
    return obj


# Set on a pod that isolateNetwork took out of its ReplicaSet: the pod keeps its
# place in the owner chain, so later steps (a scale-down) still find the workload.
DETACHED_FROM = "firebreak.dev/detached-from"


def controller_of(obj: Obj) -> Obj | None:
    """The ownerReference marked as controller, or the ReplicaSet a quarantined pod
    was detached from."""
    meta = obj.get("metadata", {})
    for owner in meta.get("ownerReferences") or ():
        if owner.get("controller"):
            return owner  # type: ignore[no-any-return]
    detached_from = (meta.get("annotations") or {}).get(DETACHED_FROM)
    if detached_from:
        return {"kind": "ReplicaSet", "name": detached_from}
    return None


def owner_chain(kube: Kube, obj: Obj) -> list[Obj]:
    """The controllers above ``obj``, nearest first (Pod -> ReplicaSet -> Deployment)."""
    chain: list[Obj] = []
    namespace = obj["metadata"].get("namespace")
    current = obj
    while (owner := controller_of(current)) is not None and len(chain) < 5:
        parent = read_object(kube, owner["kind"], namespace, owner["name"])
        if parent is None:
            break
        chain.append(parent)
        current = parent
    return chain


def top_workload(kube: Kube, target: Target) -> Obj | None:
    """The workload that manages the target: itself for a workload, else its top owner."""
    obj = read_target(kube, target)
    if target.kind is TargetKind.node:
        return None
    if target.kind is not TargetKind.pod:
        return obj
    chain = owner_chain(kube, obj)
    return chain[-1] if chain else None


def live_pods(kube: Kube, namespace: str, label_selector: str | None = None) -> list[Obj]:
    """The pods of a namespace not being deleted, optionally only those selected."""
    query = {"labelSelector": label_selector} if label_selector else None
    items = kube.items(path("v1", "pods", namespace), query=query)
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def pods_of(kube: Kube, workload: Obj) -> list[Obj]:
    """Pods selected by a workload's selector (and not being deleted)."""
    selector = to_query(workload.get("spec", {}).get("selector"))
    if not selector:
        return []
    return live_pods(kube, workload["metadata"]["namespace"], label_selector=selector)


def target_pods(kube: Kube, target: Target, scope: str) -> list[Obj]:
    """The pods a step acts on: the target pod alone (``pod``) or every replica of the
    workload it belongs to (``workload``)."""
    if target.kind is TargetKind.node:
        raise ActionRefused("the target is a Node; this step acts on pods")
    obj = read_target(kube, target)
    if target.kind is TargetKind.pod:
        if scope == "pod":
            return [obj]
        workload = top_workload(kube, target)
        return pods_of(kube, workload) if workload is not None else [obj]
    if scope == "pod":
        raise ActionRefused(
            f"the target is a {target.kind.value}, not a pod: use scope 'workload' to act "
            f"on all of its replicas, or target the offending pod"
        )
    return pods_of(kube, obj)


def is_ready(pod: Obj) -> bool:
    conditions = pod.get("status", {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
