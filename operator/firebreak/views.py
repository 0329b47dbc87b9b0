"""What the operator's watches have seen, for reads on the hot path.

Every incident's quarantine judges the NetworkPolicies of its namespace, and every
check of a quarantine does so again. Listing them from the API server each time
costs a request and the decoding of every policy there, which grows with the
namespace: a burst of incidents in one namespace makes one policy per incident.
The operator already watches NetworkPolicies (a changed policy wakes the
quarantines it may open), so ``PolicyView`` keeps what that watch delivers, and
the actions read the namespace's policies from it.

The view is as current as the watch: a policy written a moment ago may not be in
it yet. That is safe for a quarantine: every policy the watch delivers later wakes
the quarantines of its namespace again (``handlers.network_policy``), and writes
based on what the view holds carry the policy's ``resourceVersion`` as a
precondition. Until the watch's first listing is complete, ``in_namespace``
answers None, and the actions list from the API server as before.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import orjson

from .isolation import PolicySet

Obj = dict[str, Any]
# Of a policy's annotations, only those the operator reads are kept.
KEPT_ANNOTATIONS = ("firebreak.dev/incident-uid",)
# Parts of a spec held once for every policy that has them, up to this many kinds.
SHARED_LIMIT = 256


def trimmed(policy: Mapping[str, Any]) -> Obj:
    """What the quarantine needs of a policy: its name, version, labels, the
    annotations the operator reads, and its spec."""
    meta = policy.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    kept: Obj = {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "resourceVersion": meta.get("resourceVersion"),
        "labels": dict(meta.get("labels") or {}),
        "annotations": {k: annotations[k] for k in KEPT_ANNOTATIONS if k in annotations},
    }
    spec = policy.get("spec") or {}
    return {"metadata": kept,
            "spec": {k: v if k == "podSelector" else _shared(v) for k, v in spec.items()}}


_shared_parts: dict[bytes, Any] = {}


def _shared(value: Any) -> Any:
    """One object for equal parts of specs. Every incident's quarantine policy has the
    same rules and policy types, and a namespace holds one per incident: shared, they
    take a third of the memory. Safe because nothing changes a policy it reads from
    the view (``PolicySet``); a part not seen among the latest kinds is kept as is."""
    key = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    found = _shared_parts.get(key)
    if found is None:
        if len(_shared_parts) >= SHARED_LIMIT:
            _shared_parts.clear()
        found = _shared_parts[key] = value
    return found


class PolicyView:
    """The NetworkPolicies the watch has delivered, by namespace. Written from the
    event loop, read from the workers' threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_namespace: dict[str, PolicySet] = {}
        self._synced = False

    def upsert(self, policy: Mapping[str, Any]) -> None:
        """A policy as the watch delivered it (ADDED, MODIFIED, or the first listing).
        An older version than the one held is ignored."""
        kept = trimmed(policy)
        meta = kept["metadata"]
        namespace, name = str(meta["namespace"]), str(meta["name"])
        with self._lock:
            policies = self._by_namespace.get(namespace)
            if policies is None:
                policies = self._by_namespace[namespace] = PolicySet()
            held = policies.get(name)
            if held is not None and _older(meta["resourceVersion"],
                                           held["metadata"]["resourceVersion"]):
                return
            policies.put(kept)

    def remove(self, namespace: str, name: str) -> None:
        with self._lock:
            policies = self._by_namespace.get(namespace)
            if policies is not None:
                policies.discard(name)

    def mark_synced(self) -> None:
        """The watch's first listing has been delivered in full."""
        self._synced = True

    def in_namespace(self, namespace: str) -> PolicySet | None:
        """The namespace's policies, a copy the caller may change (the policies in it
        are the view's: read only), or None while the first listing is still
        arriving."""
        if not self._synced:
            return None
        with self._lock:
            policies = self._by_namespace.get(namespace)
            return policies.copy() if policies is not None else PolicySet()

    def get(self, namespace: str, name: str) -> Obj | None:
        """One policy as the watch has it (its spec shared, read only), or None."""
        with self._lock:
            policies = self._by_namespace.get(namespace)
            return policies.get(name) if policies is not None else None

    def __len__(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._by_namespace.values())


def _older(version: Any, than: Any) -> bool:
    """Whether ``version`` is older than ``than`` (etcd's revisions are numbers; any
    other form is taken as newer, as the latest delivered)."""
    a, b = str(version), str(than)
    return a.isdigit() and b.isdigit() and int(a) < int(b)
