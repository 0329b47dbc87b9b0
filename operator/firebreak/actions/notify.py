"""notify: tell people, by a JSON webhook or a Slack-compatible incoming webhook.

Where to post comes from a Secret in the operator's own namespace, never from the
playbook: its key ``url`` (a Slack incoming-webhook URL is itself a credential) and,
optionally, ``token``, sent as ``Authorization: Bearer <token>``. Whoever may write
playbooks thus cannot read, change or redirect a receiver, and the operator reads
Secrets nowhere else.

A post is tried up to ``ATTEMPTS`` times with exponential backoff (tenacity) when
the receiver cannot be reached, times out, or answers 408, 429 or 5xx; any other
answer but 2xx fails at once, redirects included (a webhook that moved is a
configuration to fix, and a redirect must not carry the token elsewhere). Only
``http`` and ``https`` URLs are posted to.

The same sender announces an incident's transitions for the playbook's
``notifications`` (see ``engine`` and ``notifications``). A notification cannot be
taken back, so the step cannot be reverted; a restart between the post and its
record in status posts it again (at least once, never silently lost).
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal

import tenacity
from pydantic import Field, model_validator

from ..api import ActionName, NotificationFormat, Phase, SecretRef, template_problem
from ..kube import ApiError, Kube, NotFound, path
from ..notifications import STEP_MESSAGE, render, variables
from .base import Action, ActionContext, ActionRefused, Applied, Params, Prepared, Record

log = logging.getLogger(__name__)

ATTEMPTS = 3
TIMEOUT_SECONDS = 5.0
# Waits between attempts: exponential from WAIT_INITIAL, at most WAIT_MAX, with jitter.
WAIT_INITIAL = 0.5
WAIT_MAX = 4.0
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
ANSWER_CHARS = 200
USER_AGENT = "firebreak"


class NotifyParams(Params):
    secret_ref: SecretRef = Field(
        alias="secretRef",
        description="The Secret in the operator's namespace with the receiver's url (and "
                    "optional token).")
    format: Literal["json", "slack"] = Field(
        default="json",
        description="json posts the body; slack posts a Slack incoming-webhook message.")
    message: str | None = Field(
        default=None, min_length=1, max_length=4096,
        description="The message, with ${...} placeholders.")
    body: dict[str, Any] | None = Field(
        default=None, description="json format: the body to post, its strings templated.")

    @model_validator(mode="after")
    def _templates(self) -> NotifyParams:
        problem = template_problem(self.message, self.body)
        if problem is not None:
            raise ValueError(problem)
        return self


class NotifyRecord(Record):
    """Which Secret names the receiver, decided when the step was prepared."""

    secret: str


@dataclass(frozen=True)
class Receiver:
    url: str
    token: str | None

    @property
    def where(self) -> str:
        """The receiver without what makes it a credential: scheme and host only."""
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}"


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    attempts: int
    message: str


class _Retry(Exception):
    """A failure worth another attempt."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def read_receiver(kube: Kube, namespace: str, name: str) -> Receiver:
    """The receiver a Secret names; ``ActionRefused`` when it names none. Temporary API
    errors propagate."""
    try:
        secret = kube.request("GET", path("v1", "secrets", namespace, name))
    except NotFound:
        raise ActionRefused(f"Secret {namespace}/{name} not found: it must hold the "
                            f"receiver's url") from None
    data = secret.get("data") or {}
    if "url" not in data:
        raise ActionRefused(f"Secret {namespace}/{name} has no key url")
    url = base64.b64decode(data["url"]).decode("utf-8", errors="replace").strip()
    token = base64.b64decode(data["token"]).decode().strip() if data.get("token") else None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ActionRefused(f"Secret {namespace}/{name}: url must be an http or https URL")
    return Receiver(url=url, token=token or None)


def _answer(data: bytes) -> str:
    text = " ".join(data.decode("utf-8", errors="replace").split())
    return text[:ANSWER_CHARS]


def post(receiver: Receiver, body: dict[str, Any]) -> Outcome:
    """Post ``body`` as JSON, retrying what may pass on a later attempt. Never raises."""
    payload = json.dumps(body, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if receiver.token:
        headers["Authorization"] = f"Bearer {receiver.token}"
    attempts = 0

    def once() -> str:
        nonlocal attempts
        attempts += 1
        request = urllib.request.Request(receiver.url, data=payload, headers=headers,
                                         method="POST")
        try:
            with _OPENER.open(request, timeout=TIMEOUT_SECONDS) as response:
                return f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            answer = f"HTTP {exc.code} {_answer(exc.read())}".strip()
            if exc.code in RETRY_STATUSES:
                raise _Retry(answer) from exc
            raise ActionRefused(answer) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Retry(f"{receiver.where} unreachable: {reason}") from exc

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_Retry),
        wait=tenacity.wait_exponential_jitter(multiplier=WAIT_INITIAL, max=WAIT_MAX, jitter=0.2),
        stop=tenacity.stop_after_attempt(ATTEMPTS),
        reraise=True,
    )
    try:
        answer = retrying(once)
    except (_Retry, ActionRefused) as exc:
        return Outcome(False, attempts, str(exc))
    return Outcome(True, attempts, answer)


def deliver(kube: Kube, namespace: str, secret: str, body: dict[str, Any]) -> Outcome:
    """Read the receiver and post to it. Never raises: every failure is an outcome, so
    that a notification never stops a response."""
    try:
        receiver = read_receiver(kube, namespace, secret)
    except (ActionRefused, ApiError) as exc:
        return Outcome(False, 0, str(exc))
    return post(receiver, body)


def _tries(n: int) -> str:
    return f"{n} attempt{'' if n == 1 else 's'}"


class Notify(Action):
    name = ActionName.notify
    params_model = NotifyParams
    record_model = NotifyRecord
    revertible = False
    acts_on_target = False

    def prepare(self, ctx: ActionContext, params: NotifyParams) -> Prepared:
        namespace = ctx.config.namespace
        receiver = read_receiver(ctx.kube, namespace, params.secret_ref.name)
        return Prepared(
            message=(f"post a {params.format} notification to {receiver.where} "
                     f"(Secret {namespace}/{params.secret_ref.name})"),
            objects=[], record=NotifyRecord(secret=params.secret_ref.name))

    def apply(self, ctx: ActionContext, params: NotifyParams, record: NotifyRecord) -> Applied:
        namespace = ctx.config.namespace
        receiver = read_receiver(ctx.kube, namespace, record.secret)
        spec = ctx.incident_spec
        if spec is None:
            raise ActionRefused("the incident's spec is not known to this step")
        values = variables(namespace=ctx.incident.namespace, name=ctx.incident.name,
                           spec=spec, phase=Phase.containing, playbook=ctx.playbook,
                           event="notify", detail=f"step {ctx.step}", time=ctx.now)
        body = render(NotificationFormat(params.format), params.message, params.body, values, STEP_MESSAGE)
        outcome = post(receiver, body)
        if not outcome.delivered:
            raise ActionRefused(f"not delivered to {receiver.where} after "
                                f"{_tries(outcome.attempts)}: {outcome.message}")
        return Applied(message=(f"delivered to {receiver.where} ({outcome.message}, "
                                f"{_tries(outcome.attempts)})"), record=None)
