"""Kubernetes Events on incidents, so `kubectl describe si` tells the story.

Posting an Event is best effort: a lost Event must never stop a response, so
failures are logged and swallowed. The same reasons appear in status.timeline.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from typing import Any

from .api import API_VERSION
from .kube import Kube, classify, path

log = logging.getLogger(__name__)
COMPONENT = "firebreak"


def post_event(kube: Kube, incident: dict[str, Any], type_: str, reason: str, message: str,
               now: dt.datetime) -> None:
    """An Event about an incident (or any of Firebreak's objects: the body's kind)."""
    meta = incident["metadata"]
    stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    involved = {"apiVersion": API_VERSION, "kind": incident.get("kind", "SecurityIncident"),
                "name": meta["name"], "namespace": meta["namespace"]}
    for key, value in (("uid", meta.get("uid")),
                       ("resourceVersion", meta.get("resourceVersion"))):
        if value is not None:
            involved[key] = value
    event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name'][:200]}.", "namespace": meta["namespace"]},
        "involvedObject": involved,
        "reason": reason,
        "message": message[:1024],
        "type": type_,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        kube.request("POST", path("v1", "events", meta["namespace"]), event)
    except Exception as exc:  # an Event is never worth failing a response for
        log.warning("could not post Event %s on %s/%s: %s", reason, meta["namespace"],
                    meta["name"], classify(exc))


class EventPoster:
    """Posts Events from a background thread, so that a response never waits on one.

    The queue is bounded: under a flood, Events beyond it are dropped (and logged);
    the same facts stay in each incident's status.timeline.
    """

    def __init__(self, kube: Kube, capacity: int = 10_000) -> None:
        self.kube = kube
        self.queue: queue.Queue[tuple[dict[str, Any], str, str, str, dt.datetime] | None] = \
            queue.Queue(maxsize=capacity)
        self.thread = threading.Thread(target=self._run, name="event-poster", daemon=True)
        self.thread.start()

    def __call__(self, incident: dict[str, Any], type_: str, reason: str, message: str,
                 now: dt.datetime) -> None:
        try:
            self.queue.put_nowait((incident, type_, reason, message, now))
        except queue.Full:
            log.warning("Event queue full; dropped %s on %s", reason,
                        incident["metadata"].get("name"))

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            post_event(self.kube, *item)

    def close(self) -> None:
        self.queue.put(None)
