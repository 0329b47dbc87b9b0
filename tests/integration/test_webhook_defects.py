"""The webhook's old defects, each against a real API server (and one outage).

Every request ends 2xx, 4xx or a prompt 503; nothing is created by a request that
was not answered 2xx; an alert about a namespace that does not exist, or with names
Kubernetes cannot hold, is recorded rather than dropped; a retry is not counted
twice; and every sample payload that names a pod or workload becomes an incident.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from kubernetes import client

from firebreak.api import Source, signal_fields
from firebreak.config import OperatorConfig
from firebreak.intake import TARGET_PROBLEM, Intake
from firebreak.kube import Kube
from firebreak.sources.alertmanager import AlertmanagerPayload, signals_from_alertmanager
from firebreak.sources.falco import FalcoEvent, signal_from_falco
from firebreak.sources.signal import Signal, SignalStatus, incident_name
from firebreak.webhook import TokenSource, Webhook
from tests.helpers import GROUP, OPERATOR_NS, VERSION

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]
TOKEN = "s3cret-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
ANSWER_SECONDS = 2.0


class Hook:
    def __init__(self, session: ClientSession, base: str, custom: client.CustomObjectsApi
                 ) -> None:
        self.session, self.base, self.custom = session, base, custom
        self.created: set[tuple[str, str]] = set()

    async def post(self, path: str, body: bytes | dict[str, Any],
                   headers: dict[str, str] = HEADERS) -> tuple[int, dict[str, Any], float]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        started = time.monotonic()
        async with self.session.post(self.base + path, data=data, headers=headers) as response:
            answer = await response.json(content_type=None)
            elapsed = time.monotonic() - started
            if response.status < 300:
                self.created |= {(i["namespace"], i["name"]) for i in answer["incidents"]}
            else:
                assert response.status != 503 or response.headers["Retry-After"]
            return response.status, answer, elapsed

    def read(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, namespace, "securityincidents", name)

    def names(self) -> set[tuple[str, str]]:
        """Every incident in the cluster (to show that a refused request made none)."""
        items = self.custom.list_cluster_custom_object(GROUP, VERSION, "securityincidents")
        return {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items["items"]}

    def clean_up(self) -> None:
        for namespace, name in self.created:
            try:
                self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, "securityincidents", name,
                    {"metadata": {"finalizers": None}})
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, "securityincidents", name)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture
async def hook(kube: Kube, custom: client.CustomObjectsApi, tmp_path: Path, cluster: Any
               ) -> AsyncIterator[Hook]:
    cluster.kubectl("apply", "-f", "manifests/namespace.yaml")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config = OperatorConfig(namespace=OPERATOR_NS, webhook_token_file=token_file,
                            webhook_answer_seconds=ANSWER_SECONDS)
    webhook = Webhook(config, Intake(kube, config), TokenSource(config, kube))
    server = TestServer(webhook.app(), host="127.0.0.1")
    await server.start_server()
    webhook.ready = True
    async with ClientSession() as session:
        found = Hook(session, str(server.make_url("")), custom)
        try:
            yield found
        finally:
            found.clean_up()
    await server.close()
    webhook.executor.shutdown(wait=True)


def alert(namespace: str, pod: str = "web-1", **labels: str) -> dict[str, Any]:
    return {"status": "firing",
            "labels": {"alertname": "CryptoMiner", "namespace": namespace, "pod": pod,
                       "severity": "critical", "test": uuid.uuid4().hex, **labels},
            "annotations": {"summary": f"miner in {pod}"},
            "startsAt": "2026-11-25T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z"}


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "firebreak",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager", "alerts": list(alerts)}


# 1, 2: a namespace that does not exist; a notification written whole


async def test_a_missing_namespace_is_recorded_and_a_notification_whole(
        hook: Hook, namespace: str) -> None:
    missing = f"repro-missing-{uuid.uuid4().hex[:6]}"
    payload = notification(alert(namespace), alert(missing))
    status, body, _ = await hook.post("/alertmanager", payload)
    assert status == 200, body
    (here, there) = body["incidents"]
    assert (here["namespace"], there["namespace"]) == (namespace, OPERATOR_NS)
    stored = hook.read(OPERATOR_NS, there["name"])
    assert stored["spec"]["target"] == {"kind": "Pod", "namespace": missing, "name": "web-1"}
    assert stored["metadata"]["annotations"][TARGET_PROBLEM] == \
        f"namespace {missing} does not exist"
    # Alertmanager's retry of the same notification counts nothing twice.
    status, again, _ = await hook.post("/alertmanager", payload)
    assert status == 200
    assert [i["outcome"] for i in again["incidents"]] == ["repeated", "repeated"]
    for incident in body["incidents"]:
        assert signal_fields(hook.read(incident["namespace"], incident["name"]))[
            "signalCount"] == 1


async def test_one_invalid_alert_refuses_the_whole_notification(hook: Hook, namespace: str
                                                                ) -> None:
    before = hook.names()
    bad = {**alert(namespace, "web-2"), "labels": {"namespace": namespace, "pod": 7}}
    status, body, _ = await hook.post("/alertmanager", notification(alert(namespace), bad))
    assert status == 400
    assert "alerts.1.labels.pod" in body["error"]
    assert hook.names() == before


# 3, 4: deep nesting; lone surrogates


async def test_deep_nesting_is_a_400(hook: Hook, namespace: str) -> None:
    before = hook.names()
    text = json.dumps(notification(alert(namespace)))[:-1] + ', "x": ' + "[" * 1000 \
        + "]" * 1000 + "}"
    status, body, _ = await hook.post("/alertmanager", text.encode())
    assert status == 400
    assert "nested deeper" in body["error"]
    assert hook.names() == before


async def test_lone_surrogates(hook: Hook, namespace: str) -> None:
    escaped = json.dumps(notification(alert(namespace, team="\ud800")))
    status, body, _ = await hook.post("/alertmanager", escaped.encode())
    assert status == 200, body
    (incident,) = body["incidents"]
    assert hook.read(namespace, incident["name"])["spec"]["labels"]["team"] == "\ufffd"

    before = hook.names()
    raw = json.dumps(notification(alert(namespace, team="HERE"))).encode()
    status, body, _ = await hook.post("/alertmanager", raw.replace(b"HERE", b"\xed\xa0\x80"))
    assert status == 400
    assert "not valid UTF-8" in body["error"]
    assert hook.names() == before


# 5, 6: names Kubernetes cannot hold


@pytest.mark.parametrize("labels", [
    {"namespace": "%2e%2e"}, {"namespace": "UPPER_case"}, {"job_name": "."},
    {"statefulset": "."}, {"pod": ".."},
], ids=["percent-dots", "upper-case", "job-dot", "statefulset-dot", "pod-dotdot"])
async def test_an_impossible_name_is_recorded_without_a_target(
        hook: Hook, namespace: str, labels: dict[str, str]) -> None:
    one = alert(namespace)
    one["labels"].update(labels)
    status, body, _ = await hook.post("/alertmanager", notification(one))
    assert status == 200, body
    (incident,) = body["incidents"]
    assert incident["namespace"] == OPERATOR_NS
    stored = hook.read(OPERATOR_NS, incident["name"])
    assert "target" not in stored["spec"]
    assert "is not a valid" in stored["metadata"]["annotations"][TARGET_PROBLEM]


# 7: unbounded strings


async def test_a_300_kb_alert_name_is_stored_bounded(hook: Hook, namespace: str) -> None:
    status, body, _ = await hook.post("/alertmanager",
                                      notification(alert(namespace, alertname="A" * 300_000)))
    assert status == 200, body
    stored = hook.read(namespace, body["incidents"][0]["name"])
    assert len(stored["spec"]["alertName"]) <= 256
    assert len(json.dumps(stored["spec"])) < 40_000


# 8: an API server that stops answering


@pytest.fixture
def apiserver_pid(cluster: Any) -> Iterator[int]:
    pid: int = cluster.processes["kube-apiserver"].pid
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_a_stalled_api_server_gets_a_prompt_503_and_the_retry_counts_once(
        hook: Hook, namespace: str, apiserver_pid: int) -> None:
    payload = notification(alert(namespace))
    os.kill(apiserver_pid, signal.SIGSTOP)
    try:
        status, body, elapsed = await hook.post("/alertmanager", payload)
    finally:
        os.kill(apiserver_pid, signal.SIGCONT)
    assert status == 503, body
    assert "retry later" in body["error"]
    assert elapsed < ANSWER_SECONDS + 1.5
    for _ in range(30):  # the sender retries until the API server is back
        status, body, _ = await hook.post("/alertmanager", payload)
        if status == 200:
            break
        await asyncio.sleep(1)
    assert status == 200, body
    (incident,) = body["incidents"]
    assert signal_fields(hook.read(namespace, incident["name"]))["signalCount"] == 1


# 9: slow clients, Content-Type


async def test_a_body_that_is_not_json_is_a_415(hook: Hook, namespace: str) -> None:
    before = hook.names()
    status, body, _ = await hook.post("/alertmanager", notification(alert(namespace)),
                                      headers={**HEADERS, "Content-Type": "text/plain"})
    assert status == 415
    assert "send application/json" in body["error"]
    assert hook.names() == before


async def test_a_slow_client_gets_a_408(hook: Hook, namespace: str) -> None:
    before = hook.names()
    payload = json.dumps(notification(alert(namespace))).encode()

    async def dribble() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 16):
            yield payload[i:i + 16]
            await asyncio.sleep(0.5)

    started = time.monotonic()
    async with hook.session.post(hook.base + "/alertmanager", data=dribble(),
                                 headers=HEADERS) as response:
        assert response.status == 408
    assert time.monotonic() - started < 15
    assert hook.names() == before


# Done when: every sample payload that names a pod or workload becomes an incident


def samples() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path in sorted(FIXTURES.glob("*.json")):
        data = json.loads(path.read_text())
        route = "/alertmanager" if path.name.startswith("am_") else "/falco"
        if isinstance(data, list):  # Alertmanager API v2 alerts, as a notification
            data, route = notification(*({"status": "firing", **a} for a in data)), "/alertmanager"
        found.append((path.name, route, data))
    return found


def expected(route: str, data: dict[str, Any]) -> list[Signal]:
    if route == "/falco":
        return [signal_from_falco(FalcoEvent.model_validate(data))]
    return signals_from_alertmanager(AlertmanagerPayload.model_validate(data))


async def test_every_sample_payload_is_recorded(hook: Hook) -> None:
    named = 0
    for name, route, data in samples():
        status, body, _ = await hook.post(route, data)
        assert status == 200, (name, body)
        signals = expected(route, data)
        assert len(body["incidents"]) == len(signals), name
        for sig, incident in zip(signals, body["incidents"], strict=True):
            assert incident["name"].startswith(incident_name(sig)), name
            if sig.status is SignalStatus.resolved:
                continue
            stored = hook.read(incident["namespace"], incident["name"])
            if sig.target is not None:
                named += 1
                assert stored["spec"]["target"]["name"] == sig.target.name, name
            assert stored["spec"]["source"] == (
                Source.falco.value if route == "/falco" else Source.alertmanager.value), name
    assert named >= 20  # the samples name 24 pods and workloads
