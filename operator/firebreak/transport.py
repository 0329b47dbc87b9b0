"""HTTP/1.1 keep-alive connections to the API server, shared by the operator's threads.

The operator's own requests (``Kube.request``) go through here rather than through the
generated client's urllib3 pool: on the same TLS settings and credentials, one request
costs a third of urllib3's CPU and about a millisecond less on loopback (urllib3's
per-request bookkeeping, not the wire). Settings this module does not speak (a proxy,
a TLS server name other than the host, a pinned hostname) leave the operator on
urllib3 (``Connections.for_configuration`` returns None).

A connection is reused while it is warm. One that the server closed while it sat idle
fails on its next request before any answer came; that request is sent once more, at
once, on a new connection (what every HTTP client does for this race). A connection
idle for longer than ``max_idle`` is not reused at all: a connection dropped silently
on the way (a load balancer's idle timeout) would otherwise hang a request for its
whole timeout. Any other failure is the caller's to retry (``kube.call``).
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

# A connection the server closed while it was idle: the request that finds out never
# reached a handler, so it is sent again.
STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
         ssl.SSLEOFError)


class Answer(NamedTuple):
    status: int
    reason: str
    data: bytes


def tls_context(configuration: Any) -> ssl.SSLContext:
    """The TLS settings of a client configuration: its CA (file or data), its client
    certificate, and no verification only where the configuration says so."""
    if configuration.verify_ssl:
        context = ssl.create_default_context(
            cafile=configuration.ssl_ca_cert,
            cadata=None if configuration.ssl_ca_cert else configuration.ca_cert_data)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


class Connections:
    """Keep-alive connections to one server; any number of threads may request at once
    (each takes a connection of its own, the latest returned first)."""

    def __init__(self, base: str, context: ssl.SSLContext | None, *, keep: int = 32,
                 max_idle: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) server address: {base!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.context = context if parts.scheme == "https" else None
        self.keep = keep
        self.max_idle = max_idle
        self._clock = clock
        self._lock = threading.Lock()
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []

    @classmethod
    def for_configuration(cls, configuration: Any, **options: Any) -> Connections | None:
        """Connections on a client configuration's settings, or None where it asks for
        something only urllib3 does here (a proxy, a TLS server name, a pinned hostname)."""
        if configuration.proxy or getattr(configuration, "tls_server_name", None) \
                or configuration.assert_hostname is not None:
            return None
        base = configuration.host
        return cls(base, tls_context(configuration) if base.startswith("https:") else None,
                   **options)

    def request(self, method: str, target: str, body: bytes | None,
                headers: Mapping[str, str], timeout: float) -> Answer:
        """Send one request (``target``: the path and query) and read its whole answer."""
        url = self.prefix + target
        while True:
            connection, reused = self._take(timeout)
            try:
                connection.request(method, url, body, headers)
                response = connection.getresponse()
            except STALE:
                connection.close()
                if reused:
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            try:
                answer = Answer(response.status, response.reason, response.read())
            except BaseException:
                connection.close()
                raise
            if response.will_close:
                connection.close()
            else:
                self._give(connection)
            return answer

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, connection in idle:
            connection.close()

    def __len__(self) -> int:
        return len(self._idle)

    def _take(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        now = self._clock()
        with self._lock:
            # Returned in order, so the connections idle for too long are the first ones.
            expired = 0
            while expired < len(self._idle) and now - self._idle[expired][0] > self.max_idle:
                expired += 1
            stale, self._idle[:expired] = self._idle[:expired], []
            connection = self._idle.pop()[1] if self._idle else None
        for _, old in stale:
            old.close()
        if connection is None or connection.sock is None:
            return self._open(timeout), False
        if connection.timeout != timeout:
            connection.timeout = timeout
            connection.sock.settimeout(timeout)
        return connection, True

    def _open(self, timeout: float) -> http.client.HTTPConnection:
        if self.context is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                           context=self.context)

    def _give(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append((self._clock(), connection))
                return
        connection.close()
