"""The alert webhook: ``POST /alertmanager``, ``POST /falco``, ``POST /signals`` (and
its ``GET /signals/schema``), ``/healthz``, ``/readyz``.

Every request ends in one of three ways, and never in a 500:

- ``200``: every incident of the payload is stored (an alert that got a 200 is
  never lost);
- ``4xx`` naming the problem, and nothing stored: a missing or wrong bearer token
  (401), a body that is not JSON (415 for its Content-Type, 400 for its bytes:
  invalid UTF-8, malformed or too deeply nested JSON), a payload of the wrong shape
  (400), a body over the limit (413), a client too slow to send it (408);
- ``503`` with ``Retry-After``, promptly: the API server did not store the
  incidents within the configured time, or too many requests are in flight. The
  sender retries; a retried delivery is not counted twice (see ``intake``).

A whole payload is decided before any of it is stored: every alert is validated,
its target checked and its workload looked up first, then the incidents are
written. An unexpected error is logged and answered 503, so that the sender keeps
the alert and tries again.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ValidationError

from . import metrics
from .config import OperatorConfig
from .intake import Deadline, Intake, Prepared, Recorded
from .kube import ApiError, BadRequest, Invalid, Kube, TemporaryApiError, path
from .sources.alertmanager import AlertmanagerPayload, signals_from_alertmanager
from .sources.external import ExternalSignal, signal_from_external, signal_schema
from .sources.falco import FalcoEvent, signal_from_falco
from .sources.signal import Signal, clean

log = logging.getLogger(__name__)
INTAKE_WORKERS = 16
# Deeper JSON is refused: no alert needs it, and recursion over it would fail.
MAX_DEPTH = 64
KEEPALIVE_SECONDS = 60.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


class TokenSource:
    """The expected bearer token: from a file (re-read when it changes) or a Secret."""

    def __init__(self, config: OperatorConfig, kube: Kube) -> None:
        self.config, self.kube = config, kube
        self._token: str | None = None
        self._mtime: float | None = None

    def describe(self) -> str | None:
        if self.config.webhook_token_file is not None:
            return f"file {self.config.webhook_token_file}"
        if self.config.webhook_token_secret:
            return f"Secret {self.config.namespace}/{self.config.webhook_token_secret}"
        return None

    def at_hand(self) -> bool:
        """Whether ``token`` answers without the API (a file, or the Secret read already):
        then it is called on the event loop, not through a thread."""
        return self.config.webhook_token_file is not None or self._token is not None

    def token(self) -> str | None:
        path = self.config.webhook_token_file
        if path is not None:
            try:
                mtime = path.stat().st_mtime
                if mtime != self._mtime:
                    self._token, self._mtime = path.read_text().strip() or None, mtime
            except OSError as exc:
                log.warning("cannot read the webhook token file %s: %s", path, exc)
                return None
            return self._token
        if self._token is None and self.config.webhook_token_secret:
            self._token = self._from_secret(self.config.webhook_token_secret)
        return self._token

    def _from_secret(self, name: str) -> str | None:
        import base64

        try:
            secret = self.kube.request("GET", path("v1", "secrets", self.config.namespace, name),
                                       retry_for=self.config.webhook_answer_seconds,
                                       _request_timeout=self.config.webhook_answer_seconds)
        except TemporaryApiError:
            raise  # unknown, not wrong: the caller answers 503
        except ApiError as exc:
            log.warning("cannot read the webhook token Secret %s: %s", name, exc)
            return None
        encoded = (secret.get("data") or {}).get("token")
        return base64.b64decode(encoded).decode().strip() if encoded else None


def problems(exc: ValidationError) -> str:
    """Pydantic's errors as one line: 'alerts.0.labels: Input should be a valid dictionary'."""
    parts = []
    for error in exc.errors()[:10]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def refusal(cls: type[web.HTTPError], message: str) -> web.HTTPError:
    return cls(text=json.dumps({"error": message}), content_type="application/json")


def closing(request: web.Request, answer: web.HTTPError) -> web.HTTPError:
    """The answer, and the connection closed after it: the rest of the body is not
    read (aiohttp would otherwise linger over a stream that can only fail again)."""
    request.content.feed_eof()
    answer.force_close()
    return answer


def depth(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        current, level = stack.pop()
        if isinstance(current, dict | list):
            deepest = max(deepest, level)
            if deepest > MAX_DEPTH:
                return deepest
            children = current.values() if isinstance(current, dict) else current
            stack.extend((child, level + 1) for child in children)
    return deepest


def parse_json(raw: bytes) -> Any:
    """The body as JSON, or 400 naming what is wrong with it."""
    try:
        text = raw.decode("utf-8")  # strict: also refuses encoded surrogates (ED A0 80)
    except UnicodeDecodeError as exc:
        raise refusal(web.HTTPBadRequest, f"body is not valid UTF-8: {exc}") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise refusal(web.HTTPBadRequest,
                      f"malformed JSON: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise refusal(web.HTTPBadRequest, f"malformed JSON: {exc}") from None
    if depth(data) > MAX_DEPTH:
        raise refusal(web.HTTPBadRequest,
                      f"malformed JSON: nested deeper than {MAX_DEPTH} levels")
    # Only a \uD800-\uDFFF escape can put a lone surrogate in the text.
    return cleaned(data) if _SURROGATE_ESCAPE.search(text) else data


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def cleaned(value: Any) -> Any:
    """The value with every string valid Unicode (depth is bounded by then): JSON may
    escape a lone surrogate, which no text can hold; it becomes U+FFFD, as Go's
    encoding/json decodes it."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, list):
        return [cleaned(item) for item in value]
    if isinstance(value, dict):
        return {clean(key): cleaned(item) for key, item in value.items()}
    return value


async def expect(request: web.Request) -> None:
    """aiohttp's handling of ``Expect`` (it runs before any middleware), without
    echoing the header: undecodable bytes in it made aiohttp's own answer a 500."""
    if request.headers.get("Expect", "").lower() == "100-continue" \
            and request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return
    raise refusal(web.HTTPExpectationFailed, "only Expect: 100-continue is supported")


def is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json"))


class Webhook:
    def __init__(self, config: OperatorConfig, intake: Intake, tokens: TokenSource) -> None:
        self.config, self.intake, self.tokens = config, intake, tokens
        # Storing an incident blocks on the API; a pool of its own keeps a burst of
        # alerts from queueing behind anything else in the process.
        self.executor = ThreadPoolExecutor(max_workers=INTAKE_WORKERS,
                                           thread_name_prefix="intake")
        # Requests in flight, body reading included: a flood waits here (then gets
        # 503) rather than piling up threads, memory and API calls.
        self._slots = asyncio.Semaphore(config.webhook_max_requests)
        self.retry_after = str(max(1, math.ceil(config.webhook_answer_seconds)))
        self.ready = False
        self._runner: web.AppRunner | None = None
        # Told of each incident intake creates, on the event loop (the controller's
        # ``created``), so that its response need not wait for the watch.
        self.on_created: Callable[[dict[str, Any]], None] | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.webhook_body_limit,
                              middlewares=[self._measure, self._guard, self._authenticate])
        app.router.add_post("/alertmanager", self._alertmanager, expect_handler=expect)
        app.router.add_post("/falco", self._falco, expect_handler=expect)
        app.router.add_post("/signals", self._external, expect_handler=expect)
        app.router.add_get("/signals/schema", self._schema)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self) -> None:
        host, port = self.config.webhook_host_port
        context = None
        if self.config.webhook_tls_cert_file is not None:
            assert self.config.webhook_tls_key_file is not None
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.config.webhook_tls_cert_file,
                                    self.config.webhook_tls_key_file)
        self._runner = web.AppRunner(self.app(), access_log=None,
                                     keepalive_timeout=KEEPALIVE_SECONDS)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=context).start()
        self.ready = True
        log.info("alert webhook listening on %s://%s:%d", "https" if context else "http",
                 host, port)

    async def stop(self) -> None:
        self.ready = False
        if self._runner is not None:
            await self._runner.cleanup()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def unavailable(self, message: str) -> web.Response:
        return error(503, message, headers={"Retry-After": self.retry_after})

    @web.middleware
    async def _measure(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Outermost: every request counted by endpoint and status, with its latency;
        POSTs in the intake queue until answered."""
        started = time.monotonic()
        # The route matched (a bounded set: the app's own), never the path as sent.
        resource = request.match_info.route.resource
        endpoint = resource.canonical if resource is not None else "other"
        queue = metrics.QUEUE_DEPTH.labels("intake")
        posted = request.method == "POST"
        if posted:
            queue.inc()
        code = 500
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        except asyncio.CancelledError:
            code = 499  # the client went away before its answer (as nginx counts it)
            raise
        finally:
            if posted:
                queue.dec()
            metrics.WEBHOOK_REQUESTS.labels(endpoint, str(code)).inc()
            metrics.WEBHOOK_DURATION.labels(endpoint).observe(time.monotonic() - started)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Outermost: a slot for every POST, and no exception ever becomes a 500."""
        try:
            if request.method != "POST":
                return await handler(request)
            try:
                await asyncio.wait_for(self._slots.acquire(), self.config.webhook_answer_seconds)
            except TimeoutError:
                return self.unavailable("too many requests in flight, retry later")
            try:
                return await handler(request)
            finally:
                self._slots.release()
        except web.HTTPException:
            raise
        except Exception:
            log.exception("webhook: unexpected error on %s %s", request.method, request.path)
            return self.unavailable("internal error, nothing was promised: retry later")

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST" and self.config.webhook_auth == "token":
            try:
                expected = self.tokens.token() if self.tokens.at_hand() \
                    else await asyncio.to_thread(self.tokens.token)
            except TemporaryApiError as exc:
                return self.unavailable(f"cannot check the bearer token now, retry later: {exc}")
            given = request.headers.get("Authorization", "")
            scheme, _, token = given.partition(" ")
            if expected is None or scheme.lower() != "bearer" \
                    or not hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"),
                                               expected.encode()):
                return web.json_response(
                    {"error": "missing or wrong bearer token"}, status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="firebreak"'})
        return await handler(request)

    async def _body(self, request: web.Request, model: type[BaseModel]) -> BaseModel:
        if not is_json(request.content_type):
            raise web.HTTPUnsupportedMediaType(
                text=json.dumps({"error": f"Content-Type {request.content_type} is not "
                                          f"supported: send application/json"}),
                content_type="application/json", headers={"Accept-Post": "application/json"})
        limit = self.config.webhook_body_limit
        too_large = web.HTTPRequestEntityTooLarge(
            max_size=limit, actual_size=request.content_length or limit + 1,
            text=json.dumps({"error": f"body larger than the limit of {limit} bytes"}),
            content_type="application/json")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            # aiohttp stops reading past client_max_size
            raw = await asyncio.wait_for(request.read(), self.config.webhook_read_seconds)
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        except TimeoutError:
            raise closing(request, refusal(
                web.HTTPRequestTimeout,
                f"body not received within {self.config.webhook_read_seconds:g}s")) from None
        except RequestPayloadError as exc:  # e.g. a Content-Encoding it is not in
            raise closing(request, refusal(
                web.HTTPBadRequest, f"body could not be read: {exc.__cause__ or exc}")) from None
        data = parse_json(raw)
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise refusal(web.HTTPBadRequest,
                          f"invalid {model.__name__}: {problems(exc)}") from None
        except RecursionError:
            raise refusal(web.HTTPBadRequest,
                          f"invalid {model.__name__}: nested too deeply") from None

    async def _in_pool(self, fn: Callable[[T], Any], items: Sequence[T]) -> list[Any]:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(
            *(loop.run_in_executor(self.executor, fn, item) for item in items)))

    async def _store(self, signals: list[Signal]) -> web.Response:
        """Prepare every signal (reads only), then store them all; answer within the
        configured time."""
        deadline = Deadline(self.config.webhook_answer_seconds)
        loop = asyncio.get_running_loop()

        def prepare(signal: Signal) -> Prepared:
            return self.intake.prepare(signal, deadline)

        def store(prepared: Prepared) -> Recorded:
            recorded = self.intake.store(prepared, deadline)
            if recorded.created is not None and self.on_created is not None:
                loop.call_soon_threadsafe(self.on_created, recorded.created)
            return recorded

        async def both() -> list[Recorded]:
            if len(signals) == 1:  # nothing to wait for between the two: one thread hop
                return await self._in_pool(lambda signal: store(prepare(signal)), signals)
            prepared = await self._in_pool(prepare, signals)
            return await self._in_pool(store, prepared)

        try:
            # Calls in flight are bounded by the deadline too, but a client library may
            # retry a read on its own: the answer does not wait for that.
            results = await asyncio.wait_for(both(), deadline.seconds)
        except (TemporaryApiError, TimeoutError) as exc:
            reason = exc if isinstance(exc, TemporaryApiError) else \
                f"no answer within {deadline.seconds:g}s"
            return self.unavailable(f"could not store the incidents, retry later: {reason}")
        except ApiError as exc:
            if isinstance(exc, BadRequest | Invalid):
                return error(400, f"the API server refused the incident: {exc}")
            # Ours to fix (RBAC, the CRDs): keep the alert with the sender meanwhile.
            log.error("webhook: the API server refused an incident: %s", exc)
            return self.unavailable(f"the API server refused the incident, retry later: {exc}")
        return web.json_response({"incidents": [r.to_json() for r in results]})

    def _signals(self, build: Callable[[], list[Signal]]) -> list[Signal]:
        try:
            return build()
        except ValidationError as exc:
            raise refusal(web.HTTPBadRequest, f"invalid signal: {problems(exc)}") from None

    async def _alertmanager(self, request: web.Request) -> web.Response:
        payload = await self._body(request, AlertmanagerPayload)
        assert isinstance(payload, AlertmanagerPayload)
        return await self._store(self._signals(lambda: signals_from_alertmanager(payload)))

    async def _falco(self, request: web.Request) -> web.Response:
        event = await self._body(request, FalcoEvent)
        assert isinstance(event, FalcoEvent)
        return await self._store(self._signals(lambda: [signal_from_falco(event)]))

    async def _external(self, request: web.Request) -> web.Response:
        posted = await self._body(request, ExternalSignal)
        assert isinstance(posted, ExternalSignal)
        return await self._store(self._signals(lambda: [signal_from_external(posted)]))

    async def _schema(self, request: web.Request) -> web.Response:
        return web.json_response(_SCHEMA)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if not self.ready:
            return error(503, "starting")
        try:
            token = await asyncio.to_thread(self.tokens.token)
        except TemporaryApiError as exc:
            return error(503, f"cannot read the bearer token from {self.tokens.describe()}: {exc}")
        if self.config.webhook_auth == "token" and token is None:
            return error(503, f"no bearer token available from {self.tokens.describe()}")
        return web.json_response({"status": "ready"})


_SCHEMA = signal_schema()


def describe_auth(config: OperatorConfig, tokens: TokenSource) -> str | None:
    """Why the webhook cannot start as configured, or None when it can."""
    if config.webhook_auth == "token" and tokens.describe() is None:
        return ("no bearer token configured: set FIREBREAK_WEBHOOK_TOKEN_FILE or "
                "FIREBREAK_WEBHOOK_TOKEN_SECRET (or FIREBREAK_WEBHOOK_AUTH=none)")
    return None

