"""The alerting harness runs the real thing: a Prometheus rule reaches a webhook.

Firebreak's webhook trusts the shape of Alertmanager's notifications and the bearer
token it sends. These tests check, end to end through the real Prometheus and
Alertmanager of ``tests.alerting``, that a firing rule arrives as a version-4 body
with the rule's labels and the token, and that a rule which stops firing arrives
as a ``resolved`` notification; tests built on the harness can then rely on both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from tests.alerting import RECEIVER_NAME, AlertingStack

pytestmark = pytest.mark.alerting

ALERT = "FirebreakHarnessPodCompromised"
LABELS = {"namespace": "shop", "pod": "web-1", "severity": "critical"}


def rules(expr: str) -> str:
    return f"""
groups:
  - name: firebreak-harness
    rules:
      - alert: {ALERT}
        expr: {expr}
        labels:
          namespace: shop
          pod: web-1
          severity: critical
        annotations:
          summary: a pod in shop looks compromised
"""


FIRING = rules("vector(1)")
# Same name and labels, so a reload keeps the alert's state and resolves it.
NOT_FIRING = rules("vector(1) < 0")


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class WebhookReceiver:
    """Records every request; answers 200 so that Alertmanager does not retry."""

    def __init__(self) -> None:
        self.url = ""
        self.received: list[Received] = []
        self._changed = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        async with self._changed:
            self.received.append(Received(request.method, request.path, dict(request.headers), body))
            self._changed.notify_all()
        return web.Response(status=200)

    async def wait_for(
        self, predicate: Callable[[Received], bool], *, within: float, stack: AlertingStack, what: str
    ) -> Received:
        def match() -> Received | None:
            return next((r for r in self.received if predicate(r)), None)

        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(lambda: match() is not None)
        except TimeoutError:
            raise AssertionError(
                f"no {what} within {within:.0f}s; received {self.received!r}\n{stack.log_tails()}"
            ) from None
        found = match()
        assert found is not None
        return found


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hook = WebhookReceiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    hook.url = f"http://127.0.0.1:{port}/alerts"
    try:
        yield hook
    finally:
        await runner.cleanup()


def is_notification(status: str) -> Callable[[Received], bool]:
    def check(r: Received) -> bool:
        return bool(
            isinstance(r.body, dict)
            and r.body.get("status") == status
            and any(a["labels"].get("alertname") == ALERT for a in r.body.get("alerts", []))
        )

    return check


async def test_firing_rule_reaches_the_webhook_with_the_bearer_token(
    receiver: WebhookReceiver,
) -> None:
    # Entered from the test's own thread: the servers die with it (PR_SET_PDEATHSIG).
    with AlertingStack.started(webhook_url=receiver.url, rules=FIRING) as stack:
        got = await receiver.wait_for(is_notification("firing"), within=30, stack=stack,
                                      what="firing notification")

    assert got.method == "POST"
    assert got.path == "/alerts"
    assert got.headers["Authorization"] == f"Bearer {stack.token}"
    assert got.headers["Content-Type"].startswith("application/json")
    body = got.body
    assert body["version"] == "4"
    assert body["receiver"] == RECEIVER_NAME
    assert body["status"] == "firing"
    # group_by ['...']: the alert is alone in its group.
    assert len(body["alerts"]) == 1
    alert = body["alerts"][0]
    assert alert["status"] == "firing"
    assert alert["labels"] == {"alertname": ALERT, **LABELS}
    assert alert["annotations"]["summary"] == "a pod in shop looks compromised"
    assert alert["fingerprint"]
    assert body["commonLabels"] == alert["labels"]
    assert body["externalURL"] == stack.alertmanager.url
    assert alert["generatorURL"].startswith(stack.prometheus.url)
    # Every request carried the token; none went elsewhere.
    assert all(r.headers.get("Authorization") == f"Bearer {stack.token}" for r in receiver.received)


async def test_rule_that_stops_firing_sends_resolved(receiver: WebhookReceiver) -> None:
    with AlertingStack.started(webhook_url=receiver.url, rules=FIRING) as stack:
        firing = await receiver.wait_for(is_notification("firing"), within=30, stack=stack,
                                         what="firing notification")

        await asyncio.to_thread(stack.prometheus.set_rules, NOT_FIRING)
        resolved = await receiver.wait_for(is_notification("resolved"), within=30, stack=stack,
                                           what="resolved notification")
        await asyncio.to_thread(stack.prometheus.wait_for_no_alert, ALERT, timeout=10)

    assert resolved.headers["Authorization"] == f"Bearer {stack.token}"
    assert resolved.body["version"] == "4"
    assert resolved.body["groupKey"] == firing.body["groupKey"]
    alert = resolved.body["alerts"][0]
    assert alert["status"] == "resolved"
    assert alert["labels"] == {"alertname": ALERT, **LABELS}
    assert alert["fingerprint"] == firing.body["alerts"][0]["fingerprint"]
    assert alert["endsAt"] >= alert["startsAt"]
    assert not alert["endsAt"].startswith("0001-")
