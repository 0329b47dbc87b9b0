"""A keyed work queue, in the manner of client-go's: what the workers of one replica
take their work from.

- A key is in the queue at most once, however often it is added: the worker reads
  the object's latest state when it gets to it, so ten changes are one run.
- No two workers ever hold the same key: a key added while it is being processed
  is processed again after, never alongside.
- A key may be added for later (a retry, an approval deadline); an earlier add wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock
        self._ready: dict[K, None] = {}  # insertion-ordered: first added, first served
        self._due: dict[K, float] = {}   # keys waiting for a time, and that time
        self._heap: list[tuple[float, int, K]] = []
        self._order = itertools.count()
        self._busy: set[K] = set()
        self._again: set[K] = set()
        self._wake = asyncio.Event()

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def add(self, key: K, after: float = 0.0) -> None:
        """Process ``key`` (again) now, or ``after`` seconds from now at the latest."""
        if after <= 0:
            self._due.pop(key, None)
            if key in self._busy:
                self._again.add(key)
            else:
                self._ready[key] = None
            self._wake.set()
            return
        if key in self._ready or key in self._again:
            return  # it runs sooner anyway
        due = self._now() + after
        if self._due.get(key, float("inf")) <= due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._order), key))
        self._wake.set()

    def _promote(self) -> float | None:
        """Make keys whose time has come ready; seconds until the next one, if any."""
        now = self._now()
        while self._heap:
            due, _, key = self._heap[0]
            if self._due.get(key) != due:
                heapq.heappop(self._heap)  # superseded by a sooner add
                continue
            if due > now:
                return due - now
            heapq.heappop(self._heap)
            del self._due[key]
            if key in self._busy:
                self._again.add(key)
            else:
                self._ready[key] = None
        return None

    def take(self) -> K | None:
        """The next ready key, now marked busy; None when none is ready."""
        self._promote()
        if not self._ready:
            return None
        key = next(iter(self._ready))
        del self._ready[key]
        self._busy.add(key)
        return key

    async def get(self) -> K:
        """Wait for the next ready key; it is busy until ``done(key)``."""
        while True:
            key = self.take()
            if key is not None:
                return key
            wait = self._promote()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    def done(self, key: K) -> None:
        """The worker finished ``key``; if it was added meanwhile, it is ready again."""
        self._busy.discard(key)
        if key in self._again:
            self._again.discard(key)
            self._ready[key] = None
            self._wake.set()

    def idle(self) -> bool:
        """Nothing ready and nothing in hand (keys may be waiting for their time)."""
        self._promote()
        return not self._ready and not self._busy

    def depth(self) -> int:
        """Keys ready or in hand: the work there is now (keys waiting for their time,
        such as a poll of an approval, are not). Read from any thread (metrics)."""
        return len(self._ready) + len(self._busy)

    def pending(self) -> int:
        """Keys waiting to be processed, now or later (not counting those in hand)."""
        return len(self._ready) + len(self._due) + len(self._again)

    def __contains__(self, key: object) -> bool:
        return key in self._ready or key in self._due or key in self._again
