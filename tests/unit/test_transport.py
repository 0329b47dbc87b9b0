"""The operator's keep-alive connections (transport.py), against a TLS server on
loopback that does what API servers and the things in front of them do: keep a
connection open, close it while it is idle, answer in chunks, ask for a client
certificate, or not answer at all."""

from __future__ import annotations

import http.client
import http.server
import itertools
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from firebreak.kube import Kube, TemporaryApiError
from firebreak.transport import Connections, tls_context
from tests.controlplane.pki import Authority


@dataclass
class Seen:
    connection: int
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    """Answers by path: ``/ok`` (JSON, kept alive), ``/chunked``, ``/then-close``
    (answers, then closes the connection without saying so, as an idle timeout would),
    ``/close`` (``Connection: close``), ``/hang`` (never answers), ``/drop`` (closes
    without answering)."""

    port: int
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def setup(self) -> None:
        super().setup()
        self.number = next(self.server.numbers)
        self.server.state.connections += 1

    def log_message(self, *_: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        state: Server = self.server.state
        if self.path == "/drop":
            self.close_connection = True
            return
        state.seen.append(Seen(self.number, self.command, self.path,
                               {k.lower(): v for k, v in self.headers.items()}, body))
        if self.path == "/hang":
            time.sleep(3)
            self.close_connection = True
            return
        payload = json.dumps({"path": self.path, "connection": self.number,
                              "echo": body.decode()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (payload[:5], payload[5:]):
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path == "/close":
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        if self.path == "/then-close":
            self.close_connection = True

    do_GET = do_POST = do_PATCH = do_DELETE = _answer


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    authority = Authority.create(tmp_path_factory.mktemp("transport") / "pki")
    authority.issue("server", "server", server=True, ips=("127.0.0.1",))
    authority.issue("client", "client")
    return authority


def _serve(authority: Authority, *, client_certificate: bool) -> Iterator[Server]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(authority.folder / "server.crt", authority.folder / "server.key")
    if client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(authority.certificate)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.state = Server(httpd.server_address[1])  # type: ignore[attr-defined]
    httpd.numbers = itertools.count(1)  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(authority: Authority) -> Iterator[Server]:
    yield from _serve(authority, client_certificate=False)


def configuration(authority: Authority, port: int, **settings: Any) -> client.Configuration:
    config = client.Configuration(host=f"https://127.0.0.1:{port}")
    config.ssl_ca_cert = str(authority.certificate)
    for name, value in settings.items():
        setattr(config, name, value)
    return config


def connections(authority: Authority, server: Server, **options: Any) -> Connections:
    made = Connections.for_configuration(configuration(authority, server.port), **options)
    assert made is not None
    return made


def body(answer: Any) -> dict[str, Any]:
    assert answer.status == 200
    decoded: dict[str, Any] = json.loads(answer.data)
    return decoded


def test_requests_share_one_kept_alive_connection(authority: Authority, server: Server) -> None:
    pool = connections(authority, server)
    first = body(pool.request("GET", "/ok", None, {"Accept": "application/json"}, 5))
    second = body(pool.request("POST", "/ok", b'{"a":1}', {"Content-Type": "application/json"}, 5))
    assert first["connection"] == second["connection"] == 1
    assert server.connections == 1
    assert second["echo"] == '{"a":1}'
    assert server.seen[1].headers["content-type"] == "application/json"
    assert server.seen[1].headers["content-length"] == "7"


def test_a_chunked_answer_is_read_whole_and_the_connection_kept(
        authority: Authority, server: Server) -> None:
    pool = connections(authority, server)
    assert body(pool.request("GET", "/chunked", None, {}, 5))["path"] == "/chunked"
    assert body(pool.request("GET", "/ok", None, {}, 5))["connection"] == 1


def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_request_sent_once(
        authority: Authority, server: Server) -> None:
    pool = connections(authority, server)
    body(pool.request("GET", "/then-close", None, {}, 5))
    time.sleep(0.2)  # the server's close has arrived
    answer = body(pool.request("PATCH", "/ok", b"{}", {}, 5))
    assert answer["connection"] == 2
    assert [s.path for s in server.seen] == ["/then-close", "/ok"]  # the PATCH once


def test_connection_close_is_honoured(authority: Authority, server: Server) -> None:
    pool = connections(authority, server)
    body(pool.request("GET", "/close", None, {}, 5))
    assert len(pool) == 0
    assert body(pool.request("GET", "/ok", None, {}, 5))["connection"] == 2


def test_a_connection_idle_too_long_is_not_reused(authority: Authority, server: Server) -> None:
    now = [100.0]
    pool = connections(authority, server, max_idle=30.0, clock=lambda: now[0])
    body(pool.request("GET", "/ok", None, {}, 5))
    now[0] += 29.0
    assert body(pool.request("GET", "/ok", None, {}, 5))["connection"] == 1
    now[0] += 31.0
    assert body(pool.request("GET", "/ok", None, {}, 5))["connection"] == 2
    assert len(pool) == 1


def test_threads_at_once_each_get_a_connection_and_all_are_kept(
        authority: Authority, server: Server) -> None:
    pool = connections(authority, server, keep=3)
    barrier = threading.Barrier(5)
    answers: list[dict[str, Any]] = []

    def one() -> None:
        barrier.wait()
        answers.append(body(pool.request("GET", "/ok", None, {}, 5)))

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 5
    assert len(pool) <= 3  # the others were closed, not kept


def test_a_server_that_closes_without_answering_fails_the_request(
        authority: Authority, server: Server) -> None:
    pool = connections(authority, server)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        pool.request("GET", "/drop", None, {}, 5)
    assert len(pool) == 0


def test_a_server_that_does_not_answer_times_out(authority: Authority, server: Server) -> None:
    pool = connections(authority, server)
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        pool.request("GET", "/hang", None, {}, 0.5)
    assert time.monotonic() - began < 2.5
    assert len(pool) == 0


def test_a_path_prefix_of_the_server_address_is_kept(authority: Authority, server: Server) -> None:
    config = configuration(authority, server.port)
    config.host = f"https://127.0.0.1:{server.port}/k8s/clusters/c-1/"
    pool = Connections.for_configuration(config)
    assert pool is not None
    assert body(pool.request("GET", "/ok", None, {}, 5))["path"] == "/k8s/clusters/c-1/ok"


def test_an_untrusted_server_is_refused_unless_told_not_to_verify(
        authority: Authority, server: Server, tmp_path: Path) -> None:
    other = Authority.create(tmp_path / "other")
    config = configuration(authority, server.port, ssl_ca_cert=str(other.certificate))
    pool = Connections.for_configuration(config)
    assert pool is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        pool.request("GET", "/ok", None, {}, 5)
    insecure = Connections.for_configuration(
        configuration(authority, server.port, ssl_ca_cert=None, verify_ssl=False))
    assert insecure is not None
    assert body(insecure.request("GET", "/ok", None, {}, 5))["path"] == "/ok"


def test_a_client_certificate_is_presented(authority: Authority) -> None:
    served = _serve(authority, client_certificate=True)
    server = next(served)
    try:
        without = connections(authority, server)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            without.request("GET", "/ok", None, {}, 5)
        config = configuration(authority, server.port,
                               cert_file=str(authority.folder / "client.crt"),
                               key_file=str(authority.folder / "client.key"))
        pool = Connections.for_configuration(config)
        assert pool is not None
        assert body(pool.request("GET", "/ok", None, {}, 5))["path"] == "/ok"
    finally:
        next(served, None)


@pytest.mark.parametrize("setting", [{"proxy": "http://127.0.0.1:3128"},
                                     {"tls_server_name": "kubernetes"},
                                     {"assert_hostname": False}])
def test_settings_only_urllib3_speaks_keep_the_generated_clients_pool(
        authority: Authority, setting: dict[str, Any]) -> None:
    config = configuration(authority, 1, **setting)
    assert Connections.for_configuration(config) is None
    kube = Kube(client.ApiClient(config))
    assert kube.connections is None


def test_kube_sends_credentials_and_user_agent_and_classifies_failures(
        authority: Authority, server: Server) -> None:
    config = configuration(authority, server.port)
    config.api_key = {"authorization": "Bearer t0ken"}
    api_client = client.ApiClient(config)
    api_client.user_agent = "firebreak/test (replica-a)"
    kube = Kube(api_client)
    assert kube.connections is not None
    assert kube.request("PATCH", "/ok", {"spec": {}})["echo"] == '{"spec":{}}'
    headers = server.seen[-1].headers
    assert headers["authorization"] == "Bearer t0ken"
    assert headers["user-agent"] == "firebreak/test (replica-a)"
    assert headers["content-type"] == "application/merge-patch+json"
    with pytest.raises(TemporaryApiError):
        kube.request("GET", "/drop", retry_for=0)


def test_tls_context_reads_inline_ca_data(authority: Authority) -> None:
    config = client.Configuration(host="https://127.0.0.1:1")
    config.ca_cert_data = authority.certificate.read_text()
    context = tls_context(config)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1
