"""List-and-watch of one collection, for the resources the operator acts on: its
incidents, its playbooks and the NetworkPolicies (Kopf keeps the rest: the start-up
and clean-up, the Trivy Operator's reports, the liveness probe).

Each incident fans out three watch events (its creation, the decision, the outcome)
and its quarantine policy one more; Kopf's machinery for one event (a worker per
object, causes, handler invocation, per-object loggers, indexes) cost more CPU than
the engine's own work for the incident. Here an event is one parsed line handed to
one callback, on the event loop.

The protocol is the API server's (as client-go's reflector speaks it): a paginated
list, then a watch from the list's ``resourceVersion`` with bookmarks; a watch that
ends (the server's timeout) is resumed from the last version seen; ``410 Gone`` (the
version compacted away) lists again, and what the new listing no longer holds is
delivered as ``DELETED``. Listed objects are delivered with the event type ``None``,
as Kopf did. Connection failures back off and resume.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

from .kube import Kube
from .transport import tls_context

log = logging.getLogger(__name__)

Handler = Callable[[str | None, dict[str, Any]], Awaitable[None]]
PAGE = 500
WATCH_SECONDS = 300  # the server ends each watch after about this long (jittered)
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)


class Gone(Exception):
    """The version to resume from is no longer kept by the server: list again."""


class WatchFailed(Exception):
    """The server answered a list or watch with an error other than 410."""


class Lines:
    """Split a byte stream into lines (one JSON event each), however it is chunked;
    a line is as long as the object it carries (no line-length limit)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._buffer += chunk
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            line = bytes(self._buffer[start:end])
            start = end + 1
            if line.strip():
                yield line
        del self._buffer[:start]


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class Watch:
    """One collection (``url_path``, cluster-wide), delivered to ``handle``.
    ``synced`` is set once the first listing has been delivered."""

    def __init__(self, kube: Kube, url_path: str, handle: Handler, *, kind: str,
                 api_version: str, page: int = PAGE, watch_seconds: int = WATCH_SECONDS
                 ) -> None:
        self.kube = kube
        self.url_path = url_path
        self.handle = handle
        self.kind = kind
        self.api_version = api_version
        self.page = page
        self.watch_seconds = watch_seconds
        self.synced = asyncio.Event()
        self.version: str | None = None
        # Each object known, by (namespace, name): its uid. Enough to deliver its deletion
        # should a listing no longer hold it (a few hundred bytes per object, not its
        # labels and annotations: the handlers take a deletion so told conservatively).
        self._known: dict[tuple[str, str], str] = {}

    async def run(self) -> None:
        configuration = self.kube.api_client.configuration
        connector = aiohttp.TCPConnector(ssl=tls_context(configuration), limit=2)
        async with aiohttp.ClientSession(connector=connector) as session:
            failures = 0
            while True:
                try:
                    if self.version is None:
                        await self._list(session)
                        self.synced.set()
                    await self._watch(session)
                    failures = 0
                except Gone:
                    log.info("watch of %s: its version is gone; listing again", self.url_path)
                    self.version = None
                except Exception as exc:  # the connection, the server, or a bad answer
                    delay = BACKOFF[min(failures, len(BACKOFF) - 1)]
                    failures += 1
                    expected = (aiohttp.ClientError, OSError, TimeoutError, WatchFailed)
                    log.log(logging.WARNING if isinstance(exc, expected) else logging.ERROR,
                            "watch of %s: %s; again in %ss", self.url_path,
                            exc or type(exc).__name__, delay,
                            exc_info=not isinstance(exc, expected))
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    def _headers(self) -> dict[str, str]:
        return {**self.kube.auth_headers(), "Accept": "application/json",
                "User-Agent": self.kube.api_client.user_agent}

    def _url(self, query: dict[str, Any]) -> str:
        return f"{self.kube.api_client.configuration.host}{self.url_path}?{urlencode(query)}"

    async def _list(self, session: aiohttp.ClientSession) -> None:
        items: list[dict[str, Any]] = []
        query: dict[str, Any] = {"limit": self.page}
        while True:
            async with session.get(self._url(query), headers=self._headers(),
                                   timeout=aiohttp.ClientTimeout(total=60)) as response:
                if response.status == 410:  # the page's continue token expired
                    items, query = [], {"limit": self.page}
                    continue
                if response.status != 200:
                    raise WatchFailed(f"list: {response.status} {await response.text()}")
                page = orjson.loads(await response.read())
            for item in page.get("items") or ():
                item.setdefault("apiVersion", self.api_version)
                item.setdefault("kind", self.kind)
                items.append(item)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                version = (page.get("metadata") or {}).get("resourceVersion")
                break
            query = {"limit": self.page, "continue": token}
        listed = {_key(item) for item in items}
        gone = [self._stub(key, uid) for key, uid in self._known.items() if key not in listed]
        self._known = {}
        for stub in gone:
            await self._deliver("DELETED", stub)
        for item in items:
            await self._deliver(None, item)
        self.version = version

    async def _watch(self, session: aiohttp.ClientSession) -> None:
        seconds = int(self.watch_seconds * random.uniform(1.0, 1.2))
        query = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": seconds,
                 "resourceVersion": self.version}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=seconds + 30)
        async with session.get(self._url(query), headers=self._headers(),
                               timeout=timeout) as response:
            if response.status == 410:
                raise Gone()
            if response.status != 200:
                raise WatchFailed(f"watch: {response.status} {await response.text()}")
            lines = Lines()
            async for chunk in response.content.iter_any():
                for line in lines.feed(chunk):
                    await self._event(orjson.loads(line))

    async def _event(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise WatchFailed(f"watch: {obj.get('code')} {obj.get('message')}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.version = version
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            await self._deliver(kind, obj)

    def _stub(self, key: tuple[str, str], uid: str) -> dict[str, Any]:
        metadata = {"name": key[1], "uid": uid}
        if key[0]:
            metadata["namespace"] = key[0]
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": metadata}

    async def _deliver(self, kind: str | None, obj: dict[str, Any]) -> None:
        key = _key(obj)
        if kind == "DELETED":
            self._known.pop(key, None)
        else:
            self._known[key] = str((obj.get("metadata") or {}).get("uid") or "")
        try:
            await self.handle(kind, obj)
        except Exception:  # one object's trouble must not stop the watch of all
            log.exception("%s %s/%s: handling %s failed", self.kind, *key, kind or "listed")
