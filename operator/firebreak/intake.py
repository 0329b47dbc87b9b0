"""Intake: every signal becomes one stored SecurityIncident, once.

The incident's name comes from the signal's fingerprint, so deliveries that race
(Alertmanager retries, an HA pair, two operator replicas) all name the same
object: the first create wins, the rest find it and count themselves in
``status.signalCount`` with optimistic concurrency (``resourceVersion``), so no
count is lost. A delivery of a signal already counted (same fingerprint, same
time: a retry after the sender gave up waiting, or Alertmanager repeating a
notification) moves ``lastSeen`` but is not counted again; the times counted are
kept in ``status.signalTimes``. An alert that fires again after its incident was
resolved (a start time the incident has not counted) opens a successor
(``<name>-2``, ``-3`` ...): a resolved incident is never re-armed. A repeat of the
firing that was resolved opens nothing: the person's resolution covers it.

Incidents live with their target. A signal whose target's namespace does not
exist is still a security signal: it is recorded in the operator's namespace, its
target kept, with the reason in the ``firebreak.dev/target-problem`` annotation
(as is the reason a payload's target was dropped), and the engine acts on none.

A ``resolved`` notification never triggers containment. It ends an incident only
when the incident's playbook says ``release: onSignalResolved``.

Storing runs in two moves, so that a whole notification is decided before any of
it is written: ``prepare`` reads (the workload behind a pod) and builds the
incident; ``store`` writes it. Callers acknowledge the sender only after ``store``
returns: by then the incident is stored. Every call fits in the caller's
``Deadline``; a ``TemporaryApiError`` means nothing can be promised (answer 503).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from . import metrics
from .actions.workloads import controller_of, read_object
from .api import (
    API_VERSION,
    FINALIZER,
    FIRST_SEEN_ANNOTATION,
    INCIDENT_PLURAL,
    PLAYBOOK_PLURAL,
    SIGNAL_TIME_ANNOTATION,
    TARGET_PROBLEM_ANNOTATION,
    ReleasePolicy,
    TargetKind,
    signal_fields,
)
from .config import OperatorConfig
from .kube import (
    REQUEST_TIMEOUT,
    Conflict,
    Forbidden,
    Kube,
    NotFound,
    PermanentApiError,
    TemporaryApiError,
    path,
)
from .sources.signal import Signal, SignalStatus, incident_name

log = logging.getLogger(__name__)

SUCCESSOR_LIMIT = 50
# Without a caller's deadline (pollers, Trivy reports), give up on an unreachable API
# server after this long per call; the caller tries again later.
RETRY_SECONDS = 5.0
CONFLICT_RETRIES = 20
LOCK_STRIPES = 64
RECENT_LIMIT = 10_000
OWNERS_LIMIT = 4_096
SIGNAL_TIMES_LIMIT = 16
WORKLOAD_KIND_LABEL = "firebreak.dev/workload-kind"
WORKLOAD_NAME_LABEL = "firebreak.dev/workload-name"
TARGET_PROBLEM = TARGET_PROBLEM_ANNOTATION

Outcome = Literal["created", "updated", "repeated", "released", "ignored"]


@dataclass(frozen=True)
class Recorded:
    namespace: str
    name: str
    outcome: Outcome
    # The incident as its creation stored it (outcome "created"), for the operator's
    # own controller, which then need not wait for the watch to deliver it.
    created: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "outcome": self.outcome}


class Deadline:
    """When the sender must have its answer. Each API call gets what is left (for its
    retries and as the request's own timeout); none starts once it has passed."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = seconds, clock
        self.end = clock() + seconds

    def remaining(self) -> float:
        return self.end - self.clock()

    def options(self, retry_for: float) -> dict[str, Any]:
        left = self.remaining()
        if left <= 0:
            raise TemporaryApiError(f"the API server did not answer within {self.seconds:g}s")
        return {"retry_for": min(retry_for, left), "_request_timeout": min(REQUEST_TIMEOUT, left)}


@dataclass(frozen=True)
class Prepared:
    """A signal ready to store: where, under which name, and the incident to create."""

    signal: Signal
    namespace: str
    base: str
    body: dict[str, Any] | None = None  # None for a resolved signal


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
        # The controller of each ReplicaSet read, by its uid: a ReplicaSet's Deployment
        # stays its Deployment, so a burst about one workload reads it once.
        self._owners: OrderedDict[str, dict[str, Any] | None] = OrderedDict()

    def namespace_for(self, signal: Signal) -> str:
        """Incidents live with their target, so that team playbooks can answer them;
        signals without a namespaced target, or about a protected namespace, go to
        the operator's namespace."""
        target = signal.target
        if target is None or not target.namespace \
                or target.namespace in self.config.guarded_namespaces:
            return self.config.namespace
        return target.namespace

    def record(self, signal: Signal, deadline: Deadline | None = None) -> Recorded:
        return self.store(self.prepare(signal, deadline), deadline)

    def prepare(self, signal: Signal, deadline: Deadline | None = None) -> Prepared:
        """Everything but the writes: may read the API (a pod's workload)."""
        # Validated again: a copy made with model_copy skipped the checks.
        signal = Signal.model_validate(signal.model_dump())
        prepared = Prepared(signal, self.namespace_for(signal), incident_name(signal))
        if signal.status is SignalStatus.resolved:
            return prepared
        return replace(prepared, body=self._incident(signal, deadline))

    def store(self, prepared: Prepared, deadline: Deadline | None = None) -> Recorded:
        with self._locks[zlib.crc32(prepared.base.encode()) % LOCK_STRIPES]:
            recorded = (self._release(prepared, deadline) if prepared.body is None
                        else self._fire(prepared, deadline))
        metrics.signal(prepared.signal.source.value, recorded.outcome)
        return recorded

    def _options(self, deadline: Deadline | None) -> dict[str, Any]:
        return deadline.options(self.retry_for) if deadline is not None \
            else {"retry_for": self.retry_for}

    # --- firing ---------------------------------------------------------------

    def _fire(self, prepared: Prepared, deadline: Deadline | None) -> Recorded:
        namespace, base, body = prepared.namespace, prepared.base, prepared.body
        assert body is not None
        now = self.clock()
        time_ = _timestamp(prepared.signal.time) if prepared.signal.time else None
        # A fingerprint not seen lately is most likely new: try to create at once
        # (no read), and fall back to reading on a conflict.
        fresh = self._remember(namespace, base)
        for generation in range(1, SUCCESSOR_LIMIT + 1):
            name = base if generation == 1 else f"{base}-{generation}"
            existing = None if fresh and generation == 1 else self._read(namespace, name, deadline)
            if existing is None:
                annotations = {**body["metadata"].get("annotations", {}),
                               FIRST_SEEN_ANNOTATION: _timestamp(now)}
                if time_ is not None:
                    annotations[SIGNAL_TIME_ANNOTATION] = time_
                try:
                    created = self.kube.create(
                        path(API_VERSION, INCIDENT_PLURAL, namespace),
                        {**body, "metadata": {**body["metadata"], "name": name,
                                              "annotations": annotations}},
                        **self._options(deadline))
                except NotFound as exc:
                    # The API server's own words for a namespace that does not exist
                    # (a CRD not installed is a 404 too, and must not be taken for it).
                    if namespace == self.config.namespace \
                            or f'namespaces "{namespace}" not found' not in str(exc):
                        raise
                    return self._fire(self._elsewhere(prepared), deadline)
                if created is not None:
                    # Counted by its creation (the annotations): no status write here.
                    return Recorded(namespace, name, "created", created)
                existing = self._read(namespace, name, deadline)  # another delivery won
                if existing is None:
                    continue
            if (existing.get("spec") or {}).get("resolution"):
                if time_ is not None and time_ in (signal_fields(existing).get("signalTimes")
                                                   or []):
                    # The very firing a person resolved, repeated (Alertmanager's
                    # repeat_interval, a retry): the resolution covers it.
                    return Recorded(namespace, name, "repeated")
                continue  # resolved: a new firing opens a successor
            counted = self._count(namespace, name, now, time_, existing, deadline)
            return Recorded(namespace, name, "updated" if counted else "repeated")
        raise PermanentApiError(
            f"{SUCCESSOR_LIMIT} resolved incidents already exist for {namespace}/{base}")

    def _elsewhere(self, prepared: Prepared) -> Prepared:
        """The signal recorded in the operator's namespace, because its own is gone."""
        assert prepared.body is not None
        problem = f"namespace {prepared.namespace} does not exist"
        log.info("%s: %s; recorded in %s", prepared.base, problem, self.config.namespace)
        meta = prepared.body["metadata"]
        annotations = {**meta.get("annotations", {}), TARGET_PROBLEM: problem}
        body = {**prepared.body, "metadata": {**meta, "annotations": annotations}}
        return replace(prepared, namespace=self.config.namespace, body=body)

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

    def _read(self, namespace: str, name: str, deadline: Deadline | None) -> dict[str, Any] | None:
        return self.kube.read(path(API_VERSION, INCIDENT_PLURAL, namespace, name),
                              **self._options(deadline))

    def _count(self, namespace: str, name: str, now: dt.datetime, time_: str | None,
               current: dict[str, Any], deadline: Deadline | None) -> bool:
        """Add one to signalCount (first/lastSeen too), retrying on write conflicts;
        False when this signal's time was counted already (only lastSeen moves)."""
        for _ in range(CONFLICT_RETRIES):
            # Before any status write, the fields its creation implies (one signal).
            status = signal_fields(current)
            times = list(status.get("signalTimes") or [])
            repeat = time_ is not None and time_ in times
            if not repeat and time_ is not None:
                times = [*times, time_][-SIGNAL_TIMES_LIMIT:]
            fields: dict[str, Any] = {
                "signalCount": int(status.get("signalCount") or 0) + (0 if repeat else 1),
                "firstSeen": status.get("firstSeen") or _timestamp(now),
                "lastSeen": _timestamp(now),
            }
            if times:
                fields["signalTimes"] = times
            patch: dict[str, Any] = {
                "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                "status": fields,
            }
            try:
                self.kube.request("PATCH", path(API_VERSION, INCIDENT_PLURAL, namespace,
                                                name, "status"),
                                  patch, **self._options(deadline))
                return not repeat
            except Conflict:
                pass
            fresh = self._read(namespace, name, deadline)
            if fresh is None:
                raise PermanentApiError(f"incident {namespace}/{name} was deleted while counting")
            current = fresh
        raise PermanentApiError(f"incident {namespace}/{name}: too many concurrent updates")

    def _incident(self, signal: Signal, deadline: Deadline | None) -> dict[str, Any]:
        labels = dict(signal.labels)
        target = signal.target
        if target is not None and target.namespace:
            target, labels = self._relate_to_workload(signal, labels, deadline)
        spec: dict[str, Any] = {
            "source": signal.source.value,
            "fingerprint": signal.fingerprint,
            "severity": signal.severity.value,
            "title": signal.title,
            "labels": labels,
        }
        if signal.description:
            spec["description"] = signal.description
        if signal.alert_name:
            spec["alertName"] = signal.alert_name
        if target is not None:
            spec["target"] = target.to_api()
        # Set at creation, the finalizer spares the operator the extra write (and
        # round trip) of adding it before the first step can run.
        metadata: dict[str, Any] = {"labels": {"firebreak.dev/source": signal.source.value},
                                    "finalizers": [FINALIZER]}
        if signal.target_problem:
            metadata["annotations"] = {TARGET_PROBLEM: signal.target_problem}
        return {"apiVersion": API_VERSION, "kind": "SecurityIncident",
                "metadata": metadata, "spec": spec}

    def _relate_to_workload(self, signal: Signal, labels: dict[str, str],
                            deadline: Deadline | None) -> tuple[Any, dict[str, str]]:
        """Name the workload behind a pod (ReplicaSet -> Deployment) in the labels, so
        playbooks can match on it; a ReplicaSet target becomes its Deployment.

        Follows controller references only as far as needed: the Deployment's name is
        on its ReplicaSet, so the Deployment itself is never read."""
        target = signal.target
        assert target is not None
        try:
            obj = read_object(self.kube, target.kind.value, target.namespace, target.name,
                              **self._options(deadline))
            if obj is not None and target.kind is TargetKind.pod:
                # For the quarantine about to be decided, so that it need not read the
                # pod again (actions/network.py).
                self.kube.handoff.put("Pod", target.namespace or "", target.name, obj)
            owner = controller_of(obj) if obj is not None else None
            if owner is not None and owner["kind"] == "ReplicaSet":
                owner = self._owner_of(target.namespace or "", owner, deadline) or owner
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

    def _owner_of(self, namespace: str, replicaset: dict[str, Any],
                  deadline: Deadline | None) -> dict[str, Any] | None:
        """The controller of a ReplicaSet (a pod's owner reference), read once per uid."""
        uid = replicaset.get("uid")
        with self._recent_lock:
            if uid and uid in self._owners:
                self._owners.move_to_end(uid)
                return self._owners[uid]
        found = read_object(self.kube, "ReplicaSet", namespace, replicaset["name"],
                            **self._options(deadline))
        if found is None:
            return None
        owner = controller_of(found)
        if owner is not None:
            owner = {"kind": owner["kind"], "name": owner["name"]}
        if found["metadata"].get("uid") == uid:
            with self._recent_lock:
                self._owners[uid] = owner
                while len(self._owners) > OWNERS_LIMIT:
                    self._owners.popitem(last=False)
        return owner

    # --- resolved ---------------------------------------------------------------

    def _release(self, prepared: Prepared, deadline: Deadline | None) -> Recorded:
        namespace, base = prepared.namespace, prepared.base
        latest = self._latest(namespace, base, deadline)
        if latest is None and namespace != self.config.namespace:
            # Recorded in the operator's namespace, when its own did not exist.
            namespace = self.config.namespace
            latest = self._latest(namespace, base, deadline)
        if latest is None:
            return Recorded(prepared.namespace, base, "ignored")
        name, incident = latest
        if (incident.get("spec") or {}).get("resolution"):
            return Recorded(namespace, name, "ignored")
        playbook = (incident.get("status") or {}).get("playbook")
        if not playbook or not self._releases_on_resolve(playbook, deadline):
            return Recorded(namespace, name, "ignored")
        self.kube.request("PATCH", path(API_VERSION, INCIDENT_PLURAL, namespace, name),
                          {"spec": {"resolution": {"reason": "the signal resolved",
                                                   "by": prepared.signal.source.value}}},
                          **self._options(deadline))
        log.info("%s/%s: released, its signal resolved", namespace, name)
        return Recorded(namespace, name, "released")

    def _latest(self, namespace: str, base: str, deadline: Deadline | None
                ) -> tuple[str, dict[str, Any]] | None:
        """The newest incident of this signal (the last successor), if any."""
        latest: tuple[str, dict[str, Any]] | None = None
        for generation in range(1, SUCCESSOR_LIMIT + 1):
            name = base if generation == 1 else f"{base}-{generation}"
            found = self._read(namespace, name, deadline)
            if found is None:
                break
            latest = (name, found)
        return latest

    def _releases_on_resolve(self, ref: dict[str, str], deadline: Deadline | None) -> bool:
        playbook = self.kube.read(path(API_VERSION, PLAYBOOK_PLURAL,
                                       ref.get("namespace", self.config.namespace), ref["name"]),
                                  **self._options(deadline))
        if playbook is None:
            return False
        release = (playbook.get("spec") or {}).get("release")
        return bool(release == ReleasePolicy.on_signal_resolved.value)
