"""Who moves incidents on, and when: a store, a keyed queue, workers, and the Lease.

The watches (``watch.py``) hand what they see to ``Controller.observe``,
which keeps the latest body of each incident and playbook and queues its key. The
workers take keys from the queue and call the engine, and they do so only while
this replica holds the Lease (``leader.py``); every other replica keeps its store
and queue current, so that it can take over at once, and serves the webhook.

Below the Lease, the engine writes every decision with a ``resourceVersion``
precondition: should two replicas ever act at the same moment (a partitioned
leader, a slow handover), the second write of a decision fails, and that replica
reads the incident again instead of acting on it.

Each key is processed by one worker at a time, from the latest body; a change that
arrives meanwhile queues it again. The incident's own finalizer (set by intake at
creation, or added here) keeps it until its steps are reverted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from .actions.base import INCIDENT_LABEL, INCIDENT_NAMESPACE_LABEL, IncidentRef
from .api import FINALIZER, ActionName, StepState
from .conditions import ISOLATED
from .engine import Engine, RetryLater
from .isolation import PolicySet, adds_nothing, quarantine_label
from .kube import ApiError, without_managed_fields
from .leader import Elector
from .matching import PlaybookCandidate
from .readiness import PlaybookReadiness
from .workqueue import WorkQueue

log = logging.getLogger(__name__)

INCIDENT = "incident"
PLAYBOOK = "playbook"
# The periodic check of a namespace holding many quarantines: its pods are listed once,
# and each quarantine there is checked against that listing.
SWEEP = "sweep"
SWEEP_AT_LEAST = 4
Key = tuple[str, str, str]  # kind, namespace, name
BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class HeldQuarantine:
    """An incident holding a quarantine in some namespace, and its own policy there."""

    namespace: str
    name: str
    uid: str
    policy: str


def _isolations(body: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Each isolateNetwork step of an incident's status, with its record."""
    for step in (body.get("status") or {}).get("actions") or ():
        if step.get("action") == ActionName.isolate_network.value:
            yield step, step.get("revert") or {}


def quarantines_of(body: dict[str, Any]) -> dict[str, HeldQuarantine]:
    """The namespaces where an incident holds a quarantine (applied, not resolved)."""
    if (body.get("spec") or {}).get("resolution"):
        return {}
    meta = body["metadata"]
    return {record["namespace"]: HeldQuarantine(meta["namespace"], meta["name"],
                                                meta.get("uid", ""), record.get("policy", ""))
            for step, record in _isolations(body)
            if step.get("state") == StepState.applied.value and record.get("namespace")}


def quarantine_index(body: dict[str, Any]) -> dict[Any, HeldQuarantine]:
    """An incident's entries in the index of quarantines: by namespace; by ("policy",
    namespace, name) of its own policy; and by ("pod", namespace, uid) for each pod its
    steps recorded there, so that a policy over some pods finds the quarantines of
    those pods without trying every other."""
    held = quarantines_of(body)
    entries: dict[Any, HeldQuarantine] = dict(held)
    for namespace, quarantine in held.items():
        entries[("policy", namespace, quarantine.policy)] = quarantine
        for uid in quarantined_pods(body, namespace):
            entries[("pod", namespace, uid)] = quarantine
    return entries


class QuarantineIndex:
    """The incidents holding a quarantine, under each key ``quarantine_index`` gives
    them; kept from every body of an incident seen (the watch's, intake's, and this
    replica's own writes), from any thread."""

    def __init__(self) -> None:
        self._by: dict[Any, dict[Key, HeldQuarantine]] = {}
        self._keys: dict[Key, list[Any]] = {}
        self._lock = threading.Lock()

    def update(self, key: Key, body: dict[str, Any] | None) -> None:
        """An incident as it is now (None: gone)."""
        entries = quarantine_index(body) if body is not None else {}
        with self._lock:
            for entry in self._keys.pop(key, ()):
                holders = self._by[entry]
                del holders[key]
                if not holders:
                    del self._by[entry]
            if entries:
                self._keys[key] = list(entries)
                for entry, held in entries.items():
                    self._by.setdefault(entry, {})[key] = held

    def get(self, entry: Any, default: Iterable[HeldQuarantine] = ()) -> list[HeldQuarantine]:
        with self._lock:
            holders = self._by.get(entry)
            return list(holders.values()) if holders else list(default)

    def by_namespace(self) -> dict[str, list[Key]]:
        """The incidents holding a quarantine in each namespace."""
        with self._lock:
            return {entry: list(holders) for entry, holders in self._by.items()
                    if isinstance(entry, str)}


def quarantined_pods(body: dict[str, Any], namespace: str) -> set[str]:
    """The uids of every pod an incident's isolateNetwork steps recorded in a namespace,
    whatever became of them since (decided, applied, or reverted)."""
    return {str(p.get("uid")) for _, record in _isolations(body)
            if record.get("namespace") == namespace for p in record.get("pods") or ()}


class Settling(NamedTuple):
    """What a sweep needs of an incident to tell whether a check of its quarantine
    would find nothing to do, taken from the body when it is stored (a sweep of
    thousands of quarantines had decoded every body, every round)."""

    name: str
    namespace: str
    # Isolated=True and not resolved.
    isolated: bool
    # Each isolateNetwork step: its namespace, whether it is applied and pod-scoped,
    # its policy, and the uids of the pods it recorded.
    steps: tuple[tuple[str, bool, str, tuple[str, ...]], ...]


def settling(body: dict[str, Any]) -> Settling:
    status = body.get("status") or {}
    isolated = next((c for c in status.get("conditions") or () if c.get("type") == ISOLATED),
                    None)
    return Settling(
        name=body["metadata"]["name"], namespace=body["metadata"].get("namespace") or "",
        isolated=isolated is not None and isolated.get("status") == "True"
        and not (body.get("spec") or {}).get("resolution"),
        steps=tuple(
            (str(record.get("namespace") or ""),
             step.get("state") == StepState.applied.value
             and (step.get("params") or {}).get("scope", "pod") == "pod",
             str(record.get("policy")),
             tuple(str(p.get("uid")) for p in record.get("pods") or ()))
            for step, record in _isolations(body)))


def settled(incident: Settling, namespace: str, pods: dict[str, dict[str, Any]],
            policies: PolicySet | None) -> bool:
    """Whether a check of an incident's quarantine in ``namespace`` would find nothing to
    do, judged from a fresh listing of the namespace's pods (by uid) and the watch's
    policies: it holds (Isolated), each quarantined pod of a ``pod``-scoped step is
    there with its label, and every policy selecting one of them is its own
    quarantine policy or allows nothing more (another quarantine by the same
    playbook). Its own policy's rules name namespaces and DNS pods by their shape, so
    no pod that comes or goes can change its verdict. Anything else: False."""
    if policies is None or not incident.isolated:
        return False
    label = quarantine_label(IncidentRef(namespace=incident.namespace, name=incident.name,
                                         uid="").key)
    found = False
    for step_namespace, checkable, policy, uids in incident.steps:
        if step_namespace != namespace:
            continue
        if not checkable:
            return False
        own = policies.get(policy)
        if own is None:
            return False
        for uid in uids:
            pod = pods.get(uid)
            if pod is None:
                continue  # gone: nothing to hold there
            labels = pod["metadata"].get("labels") or {}
            if labels.get(label) != "true":
                return False
            if any(p is not own and not adds_nothing(p, own) for p in policies.selecting(labels)):
                return False
        found = True
    return found


class Stored(NamedTuple):
    """A body as the controller keeps it: encoded and compressed, decoded only when a
    worker takes it; and, for an incident, what a sweep needs of it. JSON bytes take a
    quarter of the memory of the parsed object; compressed, a contained incident's
    2.5 KiB of JSON keeps in under 1 KiB (zlib's fastest level: 15 µs to keep, 8 µs
    more to take, a body kept for as long as its incident is open)."""

    version: str
    encoded: bytes
    settling: Settling | None = None

    @classmethod
    def of(cls, body: dict[str, Any], incident: bool = True) -> Stored:
        return cls(str(body["metadata"].get("resourceVersion") or ""),
                   zlib.compress(orjson.dumps(body), 1),
                   settling(body) if incident else None)

    def body(self) -> dict[str, Any]:
        decoded: dict[str, Any] = orjson.loads(zlib.decompress(self.encoded))
        return decoded


def _version(body: dict[str, Any]) -> int | None:
    """The resourceVersion as a number, where it is one (etcd's revisions are)."""
    value = str(body["metadata"].get("resourceVersion") or "")
    return int(value) if value.isdigit() else None


class Controller:
    def __init__(self, engine: Engine, readiness: PlaybookReadiness, elector: Elector | None,
                 workers: int = 16, hold_interval: float = 30.0) -> None:
        self.engine = engine
        self.readiness = readiness
        self.elector = elector
        self.workers = workers
        self.hold_interval = hold_interval
        self.queue: WorkQueue[Key] = WorkQueue()
        self.playbooks: Callable[[], list[PlaybookCandidate]] = list
        self.indexed = False  # the watches' first listings are complete (handlers.py)
        self.quarantines = QuarantineIndex()  # from every incident body seen
        self._store: dict[Key, Stored] = {}
        self._written: dict[Key, int] = {}  # the resourceVersion of our own last write
        self._lock = threading.Lock()
        self._holds: set[Key] = set()
        # Pods listed by a sweep, for the next check of each incident there.
        self._swept: dict[Key, dict[str, list[dict[str, Any]]]] = {}
        # The pods each incident quarantines per namespace, by the version they were read from.
        self._quarantined: dict[tuple[Key, str], tuple[Any, set[str]]] = {}
        self._failures: dict[Key, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="incident")
        self._leading = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        engine.written = self.offer
        if elector is not None:
            elector.on_change(self._leadership)

    # --- what the watches see -------------------------------------------------

    def created(self, body: dict[str, Any]) -> None:
        """An incident this replica's intake has just created: queued at once, as the
        watch would deliver it a moment later (that delivery is then an echo). Only once
        the watches' first listings are complete (``indexed``): until then every
        incident waits for the watch, so none is matched against half the playbooks."""
        if not self.indexed:
            return
        self.observe(INCIDENT, "ADDED", body)
        seen = _version(body)
        if seen is not None:
            key = (INCIDENT, body["metadata"]["namespace"], body["metadata"]["name"])
            with self._lock:
                self._written[key] = max(seen, self._written.get(key, 0))

    def observe(self, kind: str, event: str | None, body: dict[str, Any]) -> None:
        """A watch event: keep the body, and queue the key unless it is the echo of
        this replica's own write (already acted on)."""
        body = without_managed_fields(body)
        meta = body["metadata"]
        key = (kind, meta.get("namespace") or "", meta["name"])
        if kind == INCIDENT:
            self.quarantines.update(key, None if event == "DELETED" else body)
        if event == "DELETED":
            with self._lock:
                self._store.pop(key, None)
                self._written.pop(key, None)
                for cached in [k for k in self._quarantined if k[0] == key]:
                    del self._quarantined[cached]
                self._swept.pop(key, None)
            self._holds.discard(key)
            return
        seen = _version(body)
        if kind == INCIDENT:
            self._count_start(body)
        with self._lock:
            ours = self._written.get(key)
            if seen is not None and ours is not None and seen <= ours:
                return  # our own write coming back, or older than it
            self._store[key] = Stored.of(body, incident=kind == INCIDENT)
        self.queue.add(key)

    def _count_start(self, body: dict[str, Any]) -> None:
        """The flood budget counts the starts every replica sees (budget.py)."""
        budget = self.engine.budget
        status = body.get("status") or {}
        actions = status.get("actions") or []
        started = actions[0].get("startedAt") if actions else None
        playbook = status.get("playbook") or {}
        if budget is None or not started:
            return
        with contextlib.suppress(ValueError):
            meta = body["metadata"]
            budget.note((meta["namespace"], meta["name"]),
                        f"{playbook.get('namespace')}/{playbook.get('name')}",
                        dt.datetime.fromisoformat(started))

    def offer(self, body: dict[str, Any]) -> None:
        """A body this replica just wrote (called from a worker thread)."""
        body = without_managed_fields(body)
        meta = body["metadata"]
        key = (INCIDENT, meta["namespace"], meta["name"])
        seen = _version(body)
        self.quarantines.update(key, body)
        stored = Stored.of(body)
        with self._lock:
            self._store[key] = stored
            if seen is not None:
                self._written[key] = seen

    def quarantined_by(self, quarantine: dict[str, Any]) -> set[str] | None:
        """The pods (uids) whose quarantine a quarantine policy is, from the record of
        the incident that made it; None when that incident is not known here."""
        meta = quarantine["metadata"]
        labels = meta.get("labels") or {}
        return self._pods((INCIDENT, labels.get(INCIDENT_NAMESPACE_LABEL, ""),
                           labels.get(INCIDENT_LABEL, "")), meta.get("namespace") or "")

    def shares_pods(self, held: HeldQuarantine, namespace: str, pods: set[str] | None) -> bool:
        """Whether ``held`` quarantines one of ``pods`` in ``namespace`` (or what either
        holds is not known here): only then can another quarantine policy change what
        its quarantine lets through, since only a pod both quarantine is selected by
        both."""
        if pods is None:
            return True
        mine = self._pods((INCIDENT, held.namespace, held.name), namespace)
        return mine is None or bool(mine & pods)

    def body(self, key: Key) -> dict[str, Any] | None:
        """The latest body kept of ``key`` (the caller's own copy)."""
        with self._lock:
            stored = self._store.get(key)
        return stored.body() if stored is not None else None

    def _pods(self, key: Key, namespace: str) -> set[str] | None:
        with self._lock:
            stored = self._store.get(key)
            if stored is None:
                return None
            version = stored.version
            cached = self._quarantined.get((key, namespace))
            if cached is not None and cached[0] == version:
                return cached[1]
        pods = quarantined_pods(stored.body(), namespace)
        with self._lock:
            self._quarantined[(key, namespace)] = (version, pods)
        return pods

    def want_hold(self, namespace: str, name: str, after: float = 0.0) -> None:
        """Check this incident's quarantine (a NetworkPolicy near it changed), now or
        within ``after`` seconds (checks asked for meanwhile are one check)."""
        key = (INCIDENT, namespace, name)
        self._holds.add(key)
        self.queue.add(key, after=after)

    def leading(self) -> bool:
        return self.elector is None or self.elector.leading()

    def _leadership(self, leading: bool) -> None:
        if leading:
            self._leading.set()
        else:
            self._leading.clear()

    # --- the workers ----------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        if self.elector is not None:
            tasks.append(asyncio.create_task(self.elector.run()))
        else:
            self._leading.set()
        if self.hold_interval > 0:
            tasks.append(asyncio.create_task(self._hold_all()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """After ``run`` is cancelled: let running steps finish, then give up the Lease."""
        self._pool.shutdown(wait=True)
        if self.elector is not None:
            self.elector.release()

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.leading():
                if self._leading.is_set():  # renewal overdue: the elector decides soon
                    await asyncio.sleep(0.2)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._leading.wait(), timeout=1.0)
                continue
            key = await self.queue.get()
            try:
                if not self.leading():
                    self.queue.add(key)  # done() below makes it ready for the next leader
                    continue
                if key[0] == SWEEP:
                    for _, namespace, name in await loop.run_in_executor(
                            self._pool, self._sweep, key[1]):
                        self.want_hold(namespace, name)
                    continue
                body = self.body(key)
                if body is None:
                    continue
                playbooks = self.playbooks()
                retry = await loop.run_in_executor(self._pool, self._process, key, body,
                                                   playbooks)
                if retry is not None:
                    self.queue.add(key, after=retry)
            finally:
                self.queue.done(key)

    async def _hold_all(self) -> None:
        """Pods change without any NetworkPolicy event (a label removed, a workload's
        new pod): every quarantine is checked each interval, the checks spread evenly
        over it (a thousand quarantines are not a thousand checks at one moment, which
        would delay the containment of new incidents behind them)."""
        while True:
            await asyncio.sleep(self.hold_interval)
            if self.leading():
                self.hold_every_quarantine(self.hold_interval)

    def hold_every_quarantine(self, within: float) -> None:
        """Ask for a check of every quarantine held, spread evenly over ``within``
        seconds. A namespace holding ``SWEEP_AT_LEAST`` quarantines or more is one
        sweep: its pods listed once, then every quarantine there checked against them."""
        units: dict[Key, None] = {}
        for namespace, keys in sorted(self.quarantines.by_namespace().items()):
            if len(keys) >= SWEEP_AT_LEAST:
                units[(SWEEP, namespace, "")] = None
            else:
                units.update(dict.fromkeys(keys))
        spacing = within / max(len(units), 1)
        for index, key in enumerate(units):
            if key[0] == SWEEP:
                self.queue.add(key, after=index * spacing)
            else:
                self.want_hold(key[1], key[2], after=index * spacing)

    def _sweep(self, namespace: str) -> list[Key]:
        """List a namespace's pods for the checks of its quarantines; the incidents to
        check (each then checked under its own key)."""
        try:
            pods = self.engine.pods_in(namespace)
        except ApiError as exc:
            log.warning("sweep of %s: %s; its quarantines are checked one by one", namespace,
                        exc)
            pods = None
        held = sorted({(INCIDENT, h.namespace, h.name) for h in self.quarantines.get(namespace)})
        if pods is None:
            with self._lock:
                return [key for key in held if key in self._store]
        by_uid = {p["metadata"]["uid"]: p for p in pods}
        policies = self.engine.policies(namespace) if self.engine.policies is not None \
            else None
        # Only the quarantines with something to check are checked, judged from what
        # was taken of each body when it was stored: none is decoded.
        with self._lock:
            stored = [(key, self._store.get(key)) for key in held]
        keys = [key for key, kept in stored if kept is not None
                and (kept.settling is None
                     or not settled(kept.settling, namespace, by_uid, policies))]
        with self._lock:
            for key in keys:
                self._swept.setdefault(key, {})[namespace] = pods
        return keys

    def _process(self, key: Key, body: dict[str, Any],
                 playbooks: list[PlaybookCandidate]) -> float | None:
        """Run one key; seconds until it should run again, or None."""
        try:
            if key[0] == PLAYBOOK:
                self.readiness.observe(body)
                retry = None
            else:
                retry = self._incident(key, body, playbooks)
        except ApiError as exc:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
            delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
            log.warning("%s %s/%s: %s; again in %ss", *key, exc, delay)
            return delay
        except Exception:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
            delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
            log.exception("%s %s/%s failed; again in %ss", *key, delay)
            return delay
        self._failures.pop(key, None)
        return retry

    def _incident(self, key: Key, body: dict[str, Any],
                  playbooks: list[PlaybookCandidate]) -> float | None:
        _, namespace, name = key
        meta = body["metadata"]
        finalizers = meta.get("finalizers") or []
        try:
            if meta.get("deletionTimestamp"):
                if FINALIZER in finalizers:
                    self.engine.release(namespace, name, body)
                return None
            if FINALIZER not in finalizers:
                adopted = self.engine.adopt(namespace, name, body)
                if adopted is None:
                    return None
                body = adopted
            retry = None
            try:
                self.engine.reconcile(namespace, name, playbooks, body=body)
            except RetryLater as exc:
                retry = exc.delay
            if key in self._holds:
                self._holds.discard(key)
                # From the latest body seen (this replica's own writes included): its
                # writes carry that version, so a body gone stale is read afresh.
                latest = self.body(key)
                with self._lock:
                    swept = self._swept.pop(key, None)
                self.engine.hold(namespace, name, latest, pods=swept)
            return retry
        except RetryLater as exc:
            return exc.delay
