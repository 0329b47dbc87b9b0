"""Intake: every signal becomes one stored SecurityIncident, once.

The incident's name comes from the signal's fingerprint, so deliveries that race
(Alertmanager retries, an HA pair, two operator replicas) all name the same
object: the first create wins, the rest find it and count themselves in
``status.signalCount`` with optimistic concurrency (``resourceVersion``), so no
count is lost. An alert that fires again after its incident was resolved opens a
successor (``<name>-2``, ``-3`` ...): a resolved incident is never re-armed.

A ``resolved`` notification never triggers containment. It ends an incident only
when the incident's playbook says ``release: onSignalResolved``.

Callers acknowledge the sender only after ``record`` returns: by then the incident
is stored. A ``TemporaryApiError`` means nothing can be promised (answer 503).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

from .actions.workloads import controller_of, read_object
from .api import FINALIZER, GROUP, INCIDENT_PLURAL, PLAYBOOK_PLURAL, VERSION, ReleasePolicy, TargetKind
from .config import OperatorConfig
from .kube import Conflict, Forbidden, Kube, PermanentApiError, call, create, read
from .sources.signal import Signal, SignalStatus, incident_name

log = logging.getLogger(__name__)

SUCCESSOR_LIMIT = 50
# The sender waits for our answer: give up on an unreachable API server after this
# long and answer 503, so that it retries later rather than timing out.
RETRY_SECONDS = 5.0
CONFLICT_RETRIES = 20
LABEL_LIMIT = 64
LABEL_VALUE_LIMIT = 256
LOCK_STRIPES = 64
RECENT_LIMIT = 10_000
WORKLOAD_KIND_LABEL = "firebreak.dev/workload-kind"
WORKLOAD_NAME_LABEL = "firebreak.dev/workload-name"


@dataclass(frozen=True)
class Recorded:
    namespace: str
    name: str
    outcome: Literal["created", "updated", "released", "ignored"]

    def to_json(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "outcome": self.outcome}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _timestamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


class Intake:
    def __init__(self, kube: Kube, config: OperatorConfig,
                 clock: Callable[[], dt.datetime] = _now,
                 retry_for: float = RETRY_SECONDS) -> None:
        self.kube = kube
        self.retry_for = retry_for
        self.config = config
        self.clock = clock
        # Deliveries of one alert are serialised in this process (no self-inflicted
        # conflicts); across processes, resourceVersion preconditions do the same.
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._recent: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._recent_lock = threading.Lock()

    def namespace_for(self, signal: Signal) -> str:
        """Incidents live with their target, so that team playbooks can answer them;
        signals without a namespaced target, or about a protected namespace, go to
        the operator's namespace."""
        target = signal.target
        if target is None or not target.namespace \
                or target.namespace in self.config.guarded_namespaces:
            return self.config.namespace
        return target.namespace

    def record(self, signal: Signal) -> Recorded:
        namespace = self.namespace_for(signal)
        base = incident_name(signal)
        with self._locks[zlib.crc32(base.encode()) % LOCK_STRIPES]:
            if signal.status is SignalStatus.resolved:
                return self._release(namespace, base, signal)
            return self._fire(namespace, base, signal)

    # --- firing ---------------------------------------------------------------

    def _fire(self, namespace: str, base: str, signal: Signal) -> Recorded:
        now = self.clock()
        body: dict[str, Any] | None = None
        # A fingerprint not seen lately is most likely new: try to create at once
        # (no read), and fall back to reading on a conflict.
        fresh = self._remember(namespace, base)
        for generation in range(1, SUCCESSOR_LIMIT + 1):
            name = base if generation == 1 else f"{base}-{generation}"
            existing = None if fresh and generation == 1 else self._read(namespace, name)
            if existing is None:
                body = body or self._incident(signal)
                created = cast(dict[str, Any] | None, create(
                    self.kube.custom.create_namespaced_custom_object, GROUP, VERSION, namespace,
                    INCIDENT_PLURAL, {**body, "metadata": {**body["metadata"], "name": name}},
                    retry_for=self.retry_for))
                if created is not None:
                    self._count(namespace, name, now, created)
                    return Recorded(namespace, name, "created")
                existing = self._read(namespace, name)  # another delivery won the race
                if existing is None:
                    continue
            if (existing.get("spec") or {}).get("resolution"):
                continue  # resolved: this firing opens a successor
            self._count(namespace, name, now, existing)
            return Recorded(namespace, name, "updated")
        raise PermanentApiError(
            f"{SUCCESSOR_LIMIT} resolved incidents already exist for {namespace}/{base}")

    def _remember(self, namespace: str, base: str) -> bool:
        """Note a fingerprint's incident; True when it was not seen recently."""
        key = (namespace, base)
        with self._recent_lock:
            seen = key in self._recent
            self._recent[key] = None
            self._recent.move_to_end(key)
            while len(self._recent) > RECENT_LIMIT:
                self._recent.popitem(last=False)
        return not seen

    def _read(self, namespace: str, name: str) -> dict[str, Any] | None:
        result = read(self.kube.custom.get_namespaced_custom_object, GROUP, VERSION, namespace,
                      INCIDENT_PLURAL, name, retry_for=self.retry_for)
        return cast(dict[str, Any] | None, result)

    def _count(self, namespace: str, name: str, now: dt.datetime,
               current: dict[str, Any]) -> None:
        """Add one to signalCount (first/lastSeen too), retrying on write conflicts."""
        for _ in range(CONFLICT_RETRIES):
            status = current.get("status") or {}
            patch = {
                "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                "status": {
                    "signalCount": int(status.get("signalCount") or 0) + 1,
                    "firstSeen": status.get("firstSeen") or _timestamp(now),
                    "lastSeen": _timestamp(now),
                },
            }
            try:
                call(self.kube.custom.patch_namespaced_custom_object_status, GROUP, VERSION,
                     namespace, INCIDENT_PLURAL, name, patch, retry_for=self.retry_for)
                return
            except Conflict:
                pass
            fresh = self._read(namespace, name)
            if fresh is None:
                raise PermanentApiError(f"incident {namespace}/{name} was deleted while counting")
            current = fresh
        raise PermanentApiError(f"incident {namespace}/{name}: too many concurrent updates")

    def _incident(self, signal: Signal) -> dict[str, Any]:
        labels = {k: v[:LABEL_VALUE_LIMIT] for k, v in sorted(signal.labels.items())[:LABEL_LIMIT]}
        target = signal.target
        if target is not None and target.namespace:
            target, labels = self._relate_to_workload(signal, labels)
        spec: dict[str, Any] = {
            "source": signal.source.value,
            "fingerprint": signal.fingerprint,
            "severity": signal.severity.value,
            "title": signal.title[:1024],
            "labels": labels,
        }
        if signal.description:
            spec["description"] = signal.description[:8192]
        if signal.alert_name:
            spec["alertName"] = signal.alert_name
        if target is not None:
            spec["target"] = target.to_api()
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SecurityIncident",
            # Set at creation, the finalizer spares the operator the extra write (and
            # round trip) of adding it before the first step can run.
            "metadata": {"labels": {"firebreak.dev/source": signal.source.value},
                         "finalizers": [FINALIZER]},
            "spec": spec,
        }

    def _relate_to_workload(self, signal: Signal, labels: dict[str, str]
                            ) -> tuple[Any, dict[str, str]]:
        """Name the workload behind a pod (ReplicaSet -> Deployment) in the labels, so
        playbooks can match on it; a ReplicaSet target becomes its Deployment.

        Follows controller references only as far as needed: the Deployment's name is
        on its ReplicaSet, so the Deployment itself is never read."""
        target = signal.target
        assert target is not None
        try:
            obj = read_object(self.kube, target.kind.value, target.namespace, target.name)
            owner = controller_of(obj) if obj is not None else None
            if owner is not None and owner["kind"] == "ReplicaSet":
                replicaset = read_object(self.kube, "ReplicaSet", target.namespace,
                                         owner["name"])
                owner = (controller_of(replicaset) if replicaset is not None else None) or owner
        except Forbidden:
            return target, labels
        if owner is None:
            return target, labels
        labels = {**labels, WORKLOAD_KIND_LABEL: owner["kind"],
                  WORKLOAD_NAME_LABEL: owner["name"]}
        if target.kind is TargetKind.replica_set and owner["kind"] == "Deployment":
            target = target.model_copy(update={"kind": TargetKind.deployment,
                                               "name": owner["name"]})
        return target, labels

    # --- resolved ---------------------------------------------------------------

    def _release(self, namespace: str, base: str, signal: Signal) -> Recorded:
        latest: tuple[str, dict[str, Any]] | None = None
        for generation in range(1, SUCCESSOR_LIMIT + 1):
            name = base if generation == 1 else f"{base}-{generation}"
            found = self._read(namespace, name)
            if found is None:
                break
            latest = (name, found)
        if latest is None:
            return Recorded(namespace, base, "ignored")
        name, incident = latest
        if (incident.get("spec") or {}).get("resolution"):
            return Recorded(namespace, name, "ignored")
        playbook = (incident.get("status") or {}).get("playbook")
        if not playbook or not self._releases_on_resolve(playbook):
            return Recorded(namespace, name, "ignored")
        call(self.kube.custom.patch_namespaced_custom_object, GROUP, VERSION, namespace,
             INCIDENT_PLURAL, name,
             {"spec": {"resolution": {"reason": "the signal resolved",
                                      "by": signal.source.value}}}, retry_for=self.retry_for)
        log.info("%s/%s: released, its signal resolved", namespace, name)
        return Recorded(namespace, name, "released")

    def _releases_on_resolve(self, ref: dict[str, str]) -> bool:
        playbook = cast(dict[str, Any] | None, read(
                        self.kube.custom.get_namespaced_custom_object, GROUP, VERSION,
                        ref.get("namespace", self.config.namespace), PLAYBOOK_PLURAL, ref["name"],
                        retry_for=self.retry_for))
        if playbook is None:
            return False
        release = (playbook.get("spec") or {}).get("release")
        return bool(release == ReleasePolicy.on_signal_resolved.value)
