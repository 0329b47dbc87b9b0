"""The one module that owns the Kubernetes client, and its error taxonomy.

- 409 on create and 404 on delete are success: every write here is idempotent.
- 429, 5xx, timeouts and refused connections are temporary: retried with
  exponential backoff and jitter (tenacity), then raised as ``TemporaryApiError``.
- Everything else (403, 422, 400 ...) is permanent: raised as ``PermanentApiError``
  with the API server's own message, to be recorded in status as it is.

Callers tell errors apart by class, not by status code: ``NotFound``, ``Conflict``
(``AlreadyExists`` when a create found the name taken), ``Forbidden``, ``Invalid``,
``Gone`` and ``BadRequest`` are the permanent errors code reacts to.
"""

from __future__ import annotations

import functools
import http.client
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast
from urllib.parse import quote, urlencode

import orjson
import tenacity
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from . import metrics
from .transport import Connections

T = TypeVar("T")

TEMPORARY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
RETRY_SECONDS = 30.0
REQUEST_TIMEOUT = 15.0


class ApiError(Exception):
    """A failed API call, with the API server's explanation."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        # Whether an earlier attempt failed in a way that leaves its effect unknown (a
        # lost answer): a precondition failing on the retry may be that attempt's doing.
        self.retried = False


class TemporaryApiError(ApiError):
    """The API server could not answer now; trying again later may work."""


class PermanentApiError(ApiError):
    """The API server refused the request; trying again will not help."""


class BadRequest(PermanentApiError):
    """400: the request is malformed."""


class Forbidden(PermanentApiError):
    """403: RBAC (or an admission policy) does not allow it."""


class NotFound(PermanentApiError):
    """404: no such object (or no such resource)."""


class Conflict(PermanentApiError):
    """409: a precondition failed (resourceVersion, uid) or the name is taken."""


class AlreadyExists(Conflict):
    """409 on create: an object of that name exists."""


class Gone(PermanentApiError):
    """410: the resourceVersion asked for is too old."""


class Invalid(PermanentApiError):
    """422: the object does not validate (an immutable field changed, a schema rule)."""


PERMANENT = {400: BadRequest, 403: Forbidden, 404: NotFound, 409: Conflict, 410: Gone,
             422: Invalid}


def is_temporary(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status in TEMPORARY_STATUSES or exc.status == 0
    # OSError: a refused or reset connection, a timeout, a TLS failure (as urllib3's
    # HTTPError holds them); HTTPException: a malformed or cut answer.
    return isinstance(exc, urllib3.exceptions.HTTPError | http.client.HTTPException | OSError)


def _status_body(exc: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def api_message(exc: ApiException) -> str:
    """The ``message`` of a Status body, or the reason phrase."""
    message = _status_body(exc).get("message")
    return f"{exc.status} {exc.reason}: {message}" if message else f"{exc.status} {exc.reason}"


def classify(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ApiException):
        cls: type[ApiError]
        if is_temporary(exc):
            cls = TemporaryApiError
        elif exc.status == 409 and _status_body(exc).get("reason") == "AlreadyExists":
            cls = AlreadyExists
        else:
            cls = PERMANENT.get(exc.status, PermanentApiError)
        return cls(api_message(exc), exc.status)
    return TemporaryApiError(f"API server unreachable: {exc}")


def _count_retry(state: tenacity.RetryCallState) -> None:
    failure = state.outcome.exception() if state.outcome is not None else None
    metrics.api_retry(failure.status if isinstance(failure, ApiException) else None)


FAILURES = (ApiException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


def call(fn: Callable[..., T], *args: Any, retry_for: float = RETRY_SECONDS, **kwargs: Any) -> T:
    """Call the API, retrying temporary failures for up to ``retry_for`` seconds (0: try
    once); raise a classified ``ApiError``."""
    kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
    began = time.monotonic()
    # Nearly every call succeeds at once: tenacity's machinery only after a failure.
    try:
        return fn(*args, **kwargs)
    except FAILURES as exc:
        left = retry_for - (time.monotonic() - began)
        if not is_temporary(exc) or left <= 0:
            raise classify(exc) from exc
        first: BaseException | None = exc

    def attempt(*args: Any, **kwargs: Any) -> T:
        # The failure above is the first attempt's (for the backoff and the count).
        nonlocal first
        if first is not None:
            failed, first = first, None
            raise failed
        return fn(*args, **kwargs)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_temporary),
        wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2),
        stop=tenacity.stop_after_delay(left),
        before_sleep=_count_retry,
        reraise=True,
    )
    try:
        return retrying(attempt, *args, **kwargs)
    except FAILURES as exc:
        error = classify(exc)
        error.retried = retrying.statistics.get("attempt_number", 1) > 1
        raise error from exc


def raw(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call the API and return the response as the API's own JSON (camelCase dict).

    Skips the client's model deserialisation, which is slow for long lists.
    """
    response = call(fn, *args, _preload_content=False, **kwargs)
    result: dict[str, Any] = json.loads(response.data)
    return result


def read_raw(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any] | None:
    """Like ``raw`` for a single object; None when it does not exist."""
    try:
        return raw(fn, *args, **kwargs)
    except NotFound:
        return None


# What a JSON body means for each verb that has one. A list is a JSON Patch; an
# object patch is a merge patch, or a strategic merge patch where the caller says so.
JSON = "application/json"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def path(api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
         subresource: str | None = None) -> str:
    """The REST path of a resource, a namespace's collection of it, or one object:
    ``path("v1", "pods", "shop", "web-0")`` is ``/api/v1/namespaces/shop/pods/web-0``."""
    parts = ["/api" if "/" not in api_version else "/apis", api_version]
    if namespace is not None:
        parts += ["namespaces", quote(namespace, safe="")]
    parts.append(plural)
    if name is not None:
        parts.append(quote(name, safe=""))
    if subresource is not None:
        parts.append(subresource)
    return "/".join(parts)


def to_keep(obj: Any) -> bytes:
    """JSON bytes to be kept for a while. orjson's result keeps the headroom its buffer
    grew by (a contained incident's 3 KiB of JSON takes 8 KiB); what is kept is copied
    to its own size."""
    return memoryview(orjson.dumps(obj)).tobytes()


def without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without ``metadata.managedFields``, which the API server adds to every
    object and no part of the operator reads (often half an object's memory). A new
    top level and metadata where there was something to take out; the rest shared."""
    meta = obj.get("metadata") or {}
    if "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


class Handoff:
    """Objects one part of the operator read a moment ago, for the part that is about
    to read them again (intake reads the pod an alert names; the engine, a few
    milliseconds later, would read it once more to quarantine it). An object is taken
    as many times as it was read, within ``ttl`` seconds of its latest read: each read
    stands for one alert about to be answered, and alerts about one pod that arrive
    together are answered from its latest read instead of all but one reading it
    again. Whoever takes it gets its own copy and must not rely on it being current
    (its writes carry the uid as a precondition, and the quarantine judges the pod as
    its labelling stored it). Kept encoded: a fifth of the memory of the object."""

    def __init__(self, ttl: float = 30.0, limit: int = 512,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        # By key: when it was read last, the latest read, reads not yet taken.
        self._held: OrderedDict[tuple[str, str, str], tuple[float, bytes, int]] = \
            OrderedDict()

    def put(self, kind: str, namespace: str, name: str, obj: dict[str, Any]) -> None:
        encoded = to_keep(without_managed_fields(obj))
        key = (kind, namespace, name)
        with self._lock:
            now = self._clock()
            held = self._held.pop(key, None)
            waiting = held[2] if held is not None and now - held[0] <= self.ttl else 0
            self._held[key] = (now, encoded, waiting + 1)
            while len(self._held) > self.limit:
                self._held.popitem(last=False)

    def take(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = (kind, namespace, name)
        with self._lock:
            held = self._held.get(key)
            if held is None:
                return None
            read, encoded, waiting = held
            fresh = self._clock() - read <= self.ttl
            if not fresh or waiting <= 1:
                del self._held[key]
            else:
                self._held[key] = (read, encoded, waiting - 1)
        if not fresh:
            return None
        taken: dict[str, Any] = orjson.loads(encoded)
        return taken

    def __len__(self) -> int:
        return len(self._held)


@dataclass
class Kube:
    """Typed API groups over one ``ApiClient``; objects are handled as plain dicts.

    The hot path (intake, the engine's status, a quarantine's writes, Events) speaks
    to the API server through ``request``: the same connection pool, credentials and
    error taxonomy, without the generated client's per-call validation and
    serialisation, which cost more than the request itself."""

    api_client: client.ApiClient
    handoff: Handoff = field(default_factory=Handoff)
    # How ``request`` reaches the server: its own keep-alive connections (transport.py)
    # where the configuration allows, else the generated client's urllib3 pool (which
    # the engine tier's recorder stands in for).
    transport: Literal["direct", "urllib3"] = "direct"
    connections: Connections | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.transport == "direct":
            self.connections = Connections.for_configuration(self.api_client.configuration)

    # The generated API groups, made on first use only: their modules take more memory
    # than the rest of the operator (80 MiB for CoreV1Api alone), and the operator
    # itself speaks through ``request``.
    @functools.cached_property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @functools.cached_property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api_client)

    @functools.cached_property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api_client)

    @functools.cached_property
    def networking(self) -> client.NetworkingV1Api:
        return client.NetworkingV1Api(self.api_client)

    @functools.cached_property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None, agent: str | None = None) -> Kube:
        """In a pod: the service account; elsewhere: the kubeconfig (or $KUBECONFIG).
        ``agent`` names this replica in the API server's audit log (its User-Agent)."""
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        # One pool for all threads of the operator; the default (4) serialises bursts.
        configuration.connection_pool_maxsize = 32
        api_client = client.ApiClient(configuration)
        if agent:
            api_client.user_agent = agent
        return cls(api_client)

    def request(self, method: str, url_path: str, body: Any = None, *,
                query: Mapping[str, str] | None = None, content_type: str | None = None,
                **options: Any) -> dict[str, Any]:
        """One API request; the answer as the API's own JSON. Temporary failures are
        retried, errors raised classified: as ``call``, with its ``options``
        (``retry_for``, ``_request_timeout``)."""
        return call(self._send, method, url_path, body, query, content_type, **options)

    def text(self, url_path: str, *, query: Mapping[str, str] | None = None,
             **options: Any) -> str:
        """GET a plain-text answer (a container's log)."""
        return cast(str, call(self._send, "GET", url_path, None, query, None, text=True,
                              **options))

    def items(self, url_path: str, *, query: Mapping[str, str] | None = None,
              **options: Any) -> list[dict[str, Any]]:
        """The objects of a list."""
        return cast(list[dict[str, Any]],
                    self.request("GET", url_path, query=query, **options)["items"])

    def remove(self, url_path: str, body: dict[str, Any] | None = None, **options: Any) -> bool:
        """DELETE an object; one already gone is success. Returns whether it existed."""
        try:
            self.request("DELETE", url_path, body, **options)
        except NotFound:
            return False
        return True

    def _send(self, method: str, url_path: str, body: Any, query: Mapping[str, str] | None,
              content_type: str | None, _request_timeout: float = REQUEST_TIMEOUT,
              text: bool = False) -> Any:
        configuration = self.api_client.configuration
        headers = {**self.api_client.default_headers, "Accept": "*/*" if text else JSON,
                   **self.auth_headers()}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = content_type or (
                JSON if method != "PATCH" else JSON_PATCH if isinstance(body, list)
                else MERGE_PATCH)
        target = url_path + (f"?{urlencode(query)}" if query else "")
        if self.connections is not None:
            status, reason, payload = self.connections.request(
                method, target, data, headers, _request_timeout)
        else:
            response = self.api_client.rest_client.pool_manager.request(
                method, configuration.host + target, body=data, headers=headers,
                timeout=urllib3.Timeout(total=_request_timeout), preload_content=False)
            status, reason, payload = response.status, response.reason or "", response.data
        if not 200 <= status < 300:
            raise ApiException(status=status, reason=reason,
                               body=payload.decode("utf-8", errors="replace"))
        if text:
            return payload.decode("utf-8", errors="replace")
        return orjson.loads(payload)

    def auth_headers(self) -> dict[str, str]:
        """The credentials' headers (a bearer token, refreshed when it is due)."""
        return {setting["key"]: setting["value"]
                for setting in self.api_client.configuration.auth_settings().values()
                if setting["in"] == "header"}

    def read(self, url_path: str, **options: Any) -> dict[str, Any] | None:
        """GET one object; None when it does not exist."""
        try:
            return self.request("GET", url_path, **options)
        except NotFound:
            return None

    def create(self, url_path: str, body: dict[str, Any], **options: Any
               ) -> dict[str, Any] | None:
        """POST an object; None when one of its name exists already."""
        try:
            return self.request("POST", url_path, body, **options)
        except Conflict:
            return None

    def served(self, group: str, version: str) -> bool:
        """Whether the API server serves ``group/version`` (for optional APIs)."""
        for g in self.request("GET", "/apis").get("groups") or ():
            if g.get("name") == group:
                return any(v.get("version") == version for v in g.get("versions") or ())
        return False
