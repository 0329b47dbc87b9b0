"""Prometheus metrics of the responder, served on a port of their own.

Above all, time to contain: from an incident's first signal until every step was
applied and the quarantine verified, per playbook. Then what the responder did
(steps by action and outcome, reverts, notifications), what it received (signals,
webhook requests and their latency), how far behind it is (queue depths, the age of
the oldest incident not contained) and how the API server treats it (retries).

Names follow Prometheus' conventions: the ``firebreak_`` prefix, the unit last
(``_seconds``), ``_total`` on counters. Every label takes values from a bounded set:
enums of the API (phase, source, action, outcome, event), route names, status codes,
and playbook names (which the operator's own users write, never an alert sender).

Most metrics are derived from the status writes of the engine (``observe_status``):
what a write changed is what happened, whichever code path wrote it. The incident
gauges are kept from the watch of incidents (``INCIDENTS``), so every replica
reports the same counts.

Everything is registered on ``REGISTRY`` (not the client library's global one), with
the process and Python collectors, and served by ``serve``.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .api import ActionName, NotificationEvent, Phase, Source

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# From a second (an automatic playbook on a quiet cluster) to hours (a manual approval).
CONTAIN_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                   3600.0, 14400.0)
WEBHOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STEP_OUTCOMES = {"Applied": "applied", "Planned": "planned", "Refused": "refused",
                 "Failed": "failed"}
REVERT_OUTCOMES = {"Reverted": "reverted", "RevertFailed": "failed"}
PHASES = frozenset(p.value for p in Phase)
SOURCES = frozenset(s.value for s in Source)
# Phases of an incident that is neither contained nor over.
UNCONTAINED = frozenset({"Pending", "Triaging", "AwaitingApproval", "Throttled", "Containing",
                         "Failed"})
# The webhook's POST routes, whose series exist from the start (webhook.py labels every
# request by the route it matched, "other" when none).
WEBHOOK_POSTS = ("/alertmanager", "/falco", "/signals")

TIME_TO_CONTAIN = Histogram(
    "firebreak_time_to_contain_seconds",
    "Seconds from an incident's first signal until it was contained (every step applied, "
    "the quarantine verified), per playbook.",
    ["playbook"], buckets=CONTAIN_BUCKETS, registry=REGISTRY)
STEPS = Counter(
    "firebreak_steps_total",
    "Playbook steps finished, by action and outcome (applied, planned, refused, failed).",
    ["action", "outcome"], registry=REGISTRY)
REVERTS = Counter(
    "firebreak_reverts_total",
    "Steps undone when an incident was resolved or deleted, by action and outcome "
    "(reverted, failed).",
    ["action", "outcome"], registry=REGISTRY)
NOTIFICATIONS = Counter(
    "firebreak_notifications_total",
    "Transitions announced to the playbooks' notifications, by event and outcome (sent, "
    "failed). notify steps are counted in firebreak_steps_total.",
    ["event", "outcome"], registry=REGISTRY)
SIGNALS = Counter(
    "firebreak_signals_total",
    "Signals received by intake, by source and what became of them (created, updated, "
    "repeated, released, ignored).",
    ["source", "outcome"], registry=REGISTRY)
WEBHOOK_REQUESTS = Counter(
    "firebreak_webhook_requests_total",
    "Requests to the alert webhook, by endpoint and status code.",
    ["endpoint", "code"], registry=REGISTRY)
WEBHOOK_DURATION = Histogram(
    "firebreak_webhook_request_duration_seconds",
    "Seconds from a webhook request's arrival to its answer, by endpoint.",
    ["endpoint"], buckets=WEBHOOK_BUCKETS, registry=REGISTRY)
QUEUE_DEPTH = Gauge(
    "firebreak_queue_depth",
    "Work accepted and not finished: intake (webhook requests waiting for a slot or being "
    "stored) and reconcile (incidents and playbooks ready for a worker or in hand; those "
    "waiting for a set time, such as an approval's next poll, are not counted).",
    ["queue"], registry=REGISTRY)
API_RETRIES = Counter(
    "firebreak_api_retries_total",
    "Kubernetes API requests retried after a temporary failure, by status code "
    "(0: no answer: refused, reset or timed out).",
    ["code"], registry=REGISTRY)


def _initialise() -> None:
    """Every series an alert rule reads exists from the start, at zero: a counter that
    first appears at 1 shows no increase to Prometheus."""
    for queue in ("intake", "reconcile"):
        QUEUE_DEPTH.labels(queue).set(0)
    for action in ActionName:
        for outcome in STEP_OUTCOMES.values():
            STEPS.labels(action.value, outcome)
        for outcome in REVERT_OUTCOMES.values():
            REVERTS.labels(action.value, outcome)
    for event in NotificationEvent:
        for outcome in ("sent", "failed"):
            NOTIFICATIONS.labels(event.value, outcome)
    for route in WEBHOOK_POSTS:
        for code in ("200", "503"):
            WEBHOOK_REQUESTS.labels(route, code)


_initialise()


def api_retry(code: int | None) -> None:
    API_RETRIES.labels(str(code or 0)).inc()


def signal(source: str, outcome: str) -> None:
    SIGNALS.labels(source if source in SOURCES else "other", outcome).inc()


# --- what a status write changed ----------------------------------------------------


def _states(status: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(a.get("action", ""), a.get("state", "")) for a in status.get("actions") or ()]


def _delivered(status: Mapping[str, Any]) -> set[tuple[str, str, str, str]]:
    return {(d.get("notification", ""), d.get("event", ""), d.get("since", ""),
             d.get("state", "")) for d in status.get("deliveries") or ()}


def observe_status(before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    """Count what one status write changed (both in the API's JSON form)."""
    old = _states(before)
    for i, (action, state) in enumerate(_states(after)):
        if i < len(old) and old[i] == (action, state):
            continue
        if state in STEP_OUTCOMES:
            STEPS.labels(action, STEP_OUTCOMES[state]).inc()
        elif state in REVERT_OUTCOMES:
            REVERTS.labels(action, REVERT_OUTCOMES[state]).inc()
    seconds = after.get("timeToContainSeconds")
    if seconds is not None and before.get("timeToContainSeconds") is None:
        playbook = after.get("playbook") or {}
        TIME_TO_CONTAIN.labels(f"{playbook.get('namespace', '')}/{playbook.get('name', '')}"
                               ).observe(float(seconds))
    for _, event, _, state in sorted(_delivered(after) - _delivered(before)):
        NOTIFICATIONS.labels(event, state.lower()).inc()


# --- incidents, as the watch shows them ----------------------------------------------


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class IncidentGauges(Collector):
    """Incidents by phase and source, defeated quarantines, and the age of the oldest
    incident not contained, from every incident the operator watches."""

    def __init__(self, clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        # uid -> (phase, source, isolation defeated, first signal)
        self._known: dict[str, tuple[str, str, bool, dt.datetime | None]] = {}

    def observe(self, event: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")
        if event == "DELETED":
            with self._lock:
                self._known.pop(uid, None)
            return
        status = body.get("status") or {}
        phase = str(status.get("phase")) if status.get("phase") in PHASES else "Pending"
        source = str((body.get("spec") or {}).get("source"))
        defeated = any(c.get("type") == "Isolated" and c.get("status") == "False"
                       for c in status.get("conditions") or ())
        first = _time(status.get("firstSeen")) or _time(meta.get("creationTimestamp"))
        with self._lock:
            self._known[uid] = (phase, source if source in SOURCES else "other", defeated,
                                first)

    def forget_all(self) -> None:
        with self._lock:
            self._known.clear()

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return list(self._families({}))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self._lock:
            known = dict(self._known)
        return list(self._families(known))

    def _families(self, known: Mapping[str, tuple[str, str, bool, dt.datetime | None]]
                  ) -> Iterator[GaugeMetricFamily]:
        counts = GaugeMetricFamily(
            "firebreak_incidents", "Incidents by phase and source.", labels=["phase", "source"])
        tally: dict[tuple[str, str], int] = {}
        for phase, source, _, _ in known.values():
            tally[(phase, source)] = tally.get((phase, source), 0) + 1
        for (phase, source), n in sorted(tally.items()):
            counts.add_metric([phase, source], n)
        yield counts
        yield GaugeMetricFamily(
            "firebreak_incidents_isolation_defeated",
            "Incidents whose quarantine is defeated: a policy still lets traffic reach or "
            "leave a quarantined pod (condition Isolated=False).",
            value=sum(1 for _, _, defeated, _ in known.values() if defeated))
        now = self.clock()
        ages = [(now - first).total_seconds() for phase, _, _, first in known.values()
                if phase in UNCONTAINED and first is not None]
        yield GaugeMetricFamily(
            "firebreak_oldest_uncontained_incident_seconds",
            "Seconds since the first signal of the oldest incident that is neither "
            "contained nor over (Pending, Triaging, AwaitingApproval, Throttled, Containing, "
            "Failed); "
            "0 when there is none.",
            value=max([0.0, *ages]))


INCIDENTS = IncidentGauges()
REGISTRY.register(INCIDENTS)


# --- queues ------------------------------------------------------------------------------


def queue_depth(queue: str, depth: Callable[[], int]) -> None:
    """Report ``queue``'s depth as ``depth()`` says at each scrape."""
    QUEUE_DEPTH.labels(queue).set_function(depth)


# --- serving ---------------------------------------------------------------------------


class Server:
    """The metrics endpoint (``/metrics``, any path in fact) in a thread of its own."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._server: WSGIServer
        self._server, self._thread = start_http_server(int(port), host.strip("[]") or "0.0.0.0",
                                                       registry=REGISTRY)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
