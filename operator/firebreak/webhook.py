"""The alert webhook: ``POST /alertmanager``, ``POST /falco``, ``/healthz``, ``/readyz``.

Every POST must carry the bearer token (unless authentication was explicitly
turned off); a missing or wrong one gets 401 and changes nothing. Bodies are
validated strictly: malformed JSON or a payload of the wrong shape gets 400 with
the problem named, a body over the limit gets 413, and none of them creates
anything. The sender is answered only after every incident of the payload is
stored: 200 means recorded; 503 means the API server could not be reached and the
sender (Alertmanager) should retry.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from pydantic import BaseModel, ValidationError

from .config import OperatorConfig
from .intake import Intake, Recorded
from .kube import ApiError, BadRequest, Invalid, Kube, TemporaryApiError, call
from .sources.alertmanager import AlertmanagerPayload, signals_from_alertmanager
from .sources.falco import FalcoEvent, signal_from_falco
from .sources.signal import Signal

log = logging.getLogger(__name__)
INTAKE_WORKERS = 16
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
            secret = call(self.kube.core.read_namespaced_secret, name, self.config.namespace)
        except ApiError as exc:
            log.warning("cannot read the webhook token Secret %s: %s", name, exc)
            return None
        encoded = (secret.data or {}).get("token")
        return base64.b64decode(encoded).decode().strip() if encoded else None


def problems(exc: ValidationError) -> str:
    """Pydantic's errors as one line: 'alerts.0.labels: Input should be a valid dictionary'."""
    parts = []
    for error in exc.errors()[:10]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Webhook:
    def __init__(self, config: OperatorConfig, intake: Intake, tokens: TokenSource) -> None:
        self.config, self.intake, self.tokens = config, intake, tokens
        # Storing an incident blocks on the API; a pool of its own keeps a burst of
        # alerts from queueing behind anything else in the process.
        self.executor = ThreadPoolExecutor(max_workers=INTAKE_WORKERS,
                                           thread_name_prefix="intake")
        self.ready = False
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.webhook_body_limit,
                              middlewares=[self._authenticate])
        app.router.add_post("/alertmanager", self._alertmanager)
        app.router.add_post("/falco", self._falco)
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
        self._runner = web.AppRunner(self.app(), access_log=None)
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

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST" and self.config.webhook_auth == "token":
            expected = await asyncio.to_thread(self.tokens.token)
            given = request.headers.get("Authorization", "")
            scheme, _, token = given.partition(" ")
            if expected is None or scheme.lower() != "bearer" \
                    or not hmac.compare_digest(token.strip().encode(), expected.encode()):
                return web.json_response(
                    {"error": "missing or wrong bearer token"}, status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="firebreak"'})
        return await handler(request)

    async def _body(self, request: web.Request, model: type[BaseModel]) -> BaseModel:
        limit = self.config.webhook_body_limit
        too_large = web.HTTPRequestEntityTooLarge(
            max_size=limit, actual_size=request.content_length or limit + 1,
            text=json.dumps({"error": f"body larger than the limit of {limit} bytes"}),
            content_type="application/json")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            raw = await request.read()  # aiohttp stops reading past client_max_size
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": f"malformed JSON: {exc}"}),
                content_type="application/json") from exc
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": f"invalid {model.__name__}: {problems(exc)}"}),
                content_type="application/json") from exc

    async def _store(self, signals: list[Signal]) -> web.Response:
        try:
            loop = asyncio.get_running_loop()
            results: list[Recorded] = list(await asyncio.gather(
                *(loop.run_in_executor(self.executor, self.intake.record, s) for s in signals)))
        except TemporaryApiError as exc:
            return error(503, f"could not store the incidents, retry later: {exc}")
        except ApiError as exc:
            status = 400 if isinstance(exc, BadRequest | Invalid) else 500
            return error(status, f"the API server refused the incident: {exc}")
        return web.json_response({"incidents": [r.to_json() for r in results]})

    async def _alertmanager(self, request: web.Request) -> web.Response:
        payload = await self._body(request, AlertmanagerPayload)
        assert isinstance(payload, AlertmanagerPayload)
        return await self._store(signals_from_alertmanager(payload))

    async def _falco(self, request: web.Request) -> web.Response:
        event = await self._body(request, FalcoEvent)
        assert isinstance(event, FalcoEvent)
        return await self._store([signal_from_falco(event)])

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if not self.ready:
            return error(503, "starting")
        if self.config.webhook_auth == "token" and await asyncio.to_thread(self.tokens.token) is None:
            return error(503, f"no bearer token available from {self.tokens.describe()}")
        return web.json_response({"status": "ready"})


def describe_auth(config: OperatorConfig, tokens: TokenSource) -> str | None:
    """Why the webhook cannot start as configured, or None when it can."""
    if config.webhook_auth == "token" and tokens.describe() is None:
        return ("no bearer token configured: set FIREBREAK_WEBHOOK_TOKEN_FILE or "
                "FIREBREAK_WEBHOOK_TOKEN_SECRET (or FIREBREAK_WEBHOOK_AUTH=none)")
    return None

