"""Which replica acts: a ``coordination.k8s.io`` Lease, held by one replica at a time.

Every replica serves the webhook and watches everything; only the Lease's holder
moves incidents on. The rules are client-go's, so they never depend on two machines'
clocks agreeing:

- a follower takes the Lease only when its record has not changed for a whole
  ``leaseDurationSeconds`` *as measured by the follower's own monotonic clock* (or
  when it names no holder: a replica that stops cleanly gives it up);
- the holder renews every ``retry`` seconds and considers itself the leader only
  while its last successful renewal is younger than ``renew_deadline``, which is
  shorter than the Lease duration: a holder cut off from the API server stops
  acting before anyone else may start;
- every write is a replace carrying the ``resourceVersion`` read, so two replicas
  racing for an expired Lease cannot both win.

The decision is pure (``decide``); ``Elector`` does the I/O around it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from .kube import ApiError, Conflict, Kube, call, read_raw

log = logging.getLogger(__name__)

LEASE_NAME = "firebreak-leader"


@dataclass(frozen=True)
class LeaseRecord:
    """The part of a Lease's spec the election reads and writes."""

    holder: str | None
    duration: float
    renewed: str | None = None
    acquired: str | None = None
    transitions: int = 0

    @classmethod
    def from_api(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(holder=spec.get("holderIdentity") or None,
                   duration=float(spec.get("leaseDurationSeconds") or 0),
                   renewed=spec.get("renewTime"), acquired=spec.get("acquireTime"),
                   transitions=int(spec.get("leaseTransitions") or 0))

    def to_api(self) -> dict[str, Any]:
        return {"holderIdentity": self.holder, "leaseDurationSeconds": round(self.duration),
                "renewTime": self.renewed, "acquireTime": self.acquired,
                "leaseTransitions": self.transitions}


class Move(enum.Enum):
    RENEW = "renew"    # ours: write a fresh renewTime
    TAKE = "take"      # free or expired: write ourselves in
    FOLLOW = "follow"  # someone else's, and alive


def decide(record: LeaseRecord, me: str, unchanged_for: float) -> Move:
    """What to do with a Lease whose record has not changed for ``unchanged_for``
    seconds of this replica's monotonic clock."""
    if record.holder == me:
        return Move.RENEW
    if record.holder is None or unchanged_for >= record.duration:
        return Move.TAKE
    return Move.FOLLOW


def micro_time(now: dt.datetime) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, in UTC."""
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    """Keeps trying to hold the Lease; ``leading()`` says whether this replica may act.

    Its API calls run on a thread of their own, so a pool busy with incidents never
    delays a renewal."""

    def __init__(self, kube: Kube, namespace: str, identity: str, lease_seconds: float,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.kube = kube
        self.coordination = client.CoordinationV1Api(kube.api_client)
        self.namespace = namespace
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.retry = max(0.2, lease_seconds / 7.5)
        self.renew_deadline = lease_seconds * 2 / 3
        self.monotonic = monotonic
        self.wall = wall
        self._seen: LeaseRecord | None = None
        self._seen_at = 0.0
        self._renewed_at: float | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lease")
        self._listeners: list[Callable[[bool], None]] = []
        self._was_leading = False

    def leading(self) -> bool:
        return self._renewed_at is not None \
            and self.monotonic() - self._renewed_at < self.renew_deadline

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(leading)`` whenever leadership is gained or lost."""
        self._listeners.append(listener)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    await loop.run_in_executor(self._thread, self.tick)
                except ApiError as exc:
                    log.warning("leader election: %s", exc)
                self._notify()
                await asyncio.sleep(self.retry)
        finally:
            self._renewed_at = None
            self._notify()

    def _notify(self) -> None:
        leading = self.leading()
        if leading != self._was_leading:
            self._was_leading = leading
            log.warning("%s %s the lease %s/%s", self.identity,
                        "holds" if leading else "no longer holds", self.namespace, LEASE_NAME)
            for listener in self._listeners:
                listener(leading)

    def tick(self) -> None:
        """One round: read the Lease, then renew, take or follow it."""
        lease = read_raw(self.coordination.read_namespaced_lease, LEASE_NAME, self.namespace,
                         retry_for=0)
        now = self.monotonic()
        if lease is None:
            self._write(None, self._claim(LeaseRecord(None, self.lease_seconds)), now)
            return
        record = LeaseRecord.from_api(lease)
        if record != self._seen:
            self._seen, self._seen_at = record, now
        move = decide(record, self.identity, now - self._seen_at)
        if move is Move.FOLLOW:
            self._renewed_at = None
            return
        stamp = micro_time(self.wall())
        if move is Move.RENEW:
            wanted = LeaseRecord(self.identity, self.lease_seconds, stamp,
                                 record.acquired or stamp, record.transitions)
        else:
            wanted = self._claim(record)
            log.warning("%s takes the lease %s/%s from %s", self.identity, self.namespace,
                        LEASE_NAME, record.holder or "nobody")
        self._write(lease, wanted, now)

    def _claim(self, record: LeaseRecord) -> LeaseRecord:
        stamp = micro_time(self.wall())
        transitions = record.transitions + (1 if record.holder is not None else 0)
        return LeaseRecord(self.identity, self.lease_seconds, stamp, stamp, transitions)

    def _write(self, lease: dict[str, Any] | None, wanted: LeaseRecord, started: float) -> None:
        meta = {"name": LEASE_NAME, "namespace": self.namespace}
        if lease is not None:
            meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": wanted.to_api()}
        try:
            if lease is None:
                call(self.coordination.create_namespaced_lease, self.namespace, body,
                     retry_for=0)
            else:
                call(self.coordination.replace_namespaced_lease, LEASE_NAME, self.namespace,
                     body, retry_for=0)
        except Conflict:
            self._renewed_at = None  # someone else wrote first: follow them
            return
        self._seen, self._seen_at = wanted, started
        self._renewed_at = started  # counted from before the write: never optimistic

    def release(self) -> None:
        """Give the Lease up (a clean stop), so that another replica takes it at once."""
        self._thread.shutdown(wait=True)
        self._renewed_at = None
        lease = read_raw(self.coordination.read_namespaced_lease, LEASE_NAME, self.namespace,
                         retry_for=2)
        if lease is None or LeaseRecord.from_api(lease).holder != self.identity:
            return
        record = LeaseRecord.from_api(lease)
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": LEASE_NAME, "namespace": self.namespace,
                             "resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {**record.to_api(), "holderIdentity": None,
                         "renewTime": micro_time(self.wall())}}
        try:
            call(self.coordination.replace_namespaced_lease, LEASE_NAME, self.namespace, body,
                 retry_for=2)
        except ApiError as exc:
            log.warning("could not give up the lease: %s", exc)
