"""The budget against alert floods: how many incidents may begin acting per minute,
cluster-wide and per playbook. Beyond it an incident waits (phase ``Throttled``)
until a slot frees, rather than acting.

A start is counted when an incident's first step begins. The count is rebuilt from
what every replica sees (each incident's first ``startedAt``, fed in by the
controller), so a replica taking over after a failover knows the last minute's
starts without any state of its own.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field

WINDOW = dt.timedelta(minutes=1)
Key = tuple[str, str]  # the incident's namespace and name


@dataclass
class Budget:
    per_minute: int  # cluster-wide; 0: no cluster-wide limit
    _starts: dict[Key, tuple[dt.datetime, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, incident: Key, playbook: str, started: dt.datetime) -> None:
        """An incident began acting at ``started`` (seen on any replica)."""
        with self._lock:
            self._starts.setdefault(incident, (started, playbook))

    def admit(self, incident: Key, playbook: str, playbook_limit: int | None,
              now: dt.datetime) -> Wait | None:
        """None, and the start counted, when the incident may begin now; otherwise how
        long it must wait, and why."""
        with self._lock:
            if incident in self._starts:
                return None  # counted already: a resumed run, or another replica's
            since = now - WINDOW
            self._forget(since)
            for limit, book, scope in ((self.per_minute, None, "cluster-wide"),
                                       (playbook_limit or 0, playbook,
                                        f"for playbook {playbook}")):
                if not limit:
                    continue  # no limit: nothing to count (a flood costs no sorting)
                times = sorted(t for t, p in self._starts.values()
                               if t > since and (book is None or p == book))
                if len(times) >= limit:
                    free_at = times[len(times) - limit] + WINDOW
                    return Wait(seconds=max(0.05, (free_at - now).total_seconds()),
                                reason=f"{len(times)} incidents began acting in the last "
                                       f"minute, the budget {scope} is {limit} per minute")
            self._starts[incident] = (now, playbook)
            return None

    def _forget(self, since: dt.datetime) -> None:
        """Drop the starts older than the window from the front (the oldest noted first,
        mostly); one noted out of order behind a newer one waits for it, uncounted."""
        while self._starts:
            key = next(iter(self._starts))
            if self._starts[key][0] > since:
                return
            del self._starts[key]


@dataclass(frozen=True)
class Wait:
    seconds: float
    reason: str
