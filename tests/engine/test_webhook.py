"""The webhook over the recording API: a 200 only once the incident is stored, 503
when the API server cannot store it, 400 when it refuses it, 401 without the token
(from a Secret here), and nothing written for a request that is refused."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from firebreak.api import signal_fields
from firebreak.config import OperatorConfig
from firebreak.intake import Intake
from firebreak.webhook import TokenSource, Webhook
from tests.engine.recorder import Recorder
from tests.engine.world import NS, OPERATOR_NS, Clock, add_app

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def alertmanager(*pods: str, status: str = "firing") -> dict[str, Any]:
    return {"version": "4", "status": status, "receiver": "firebreak", "groupLabels": {},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
            "groupKey": "{}:{}", "alerts": [
                {"status": status, "labels": {"alertname": "CryptoMiner", "namespace": NS,
                                              "pod": pod, "severity": "critical"},
                 "annotations": {"summary": f"miner in {pod}"},
                 "startsAt": "2025-03-01T11:59:00Z", "endsAt": "0001-01-01T00:00:00Z"}
                for pod in pods]}


@pytest.fixture
async def http(api: Recorder, clock: Clock) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    add_app(api)
    api.add({"kind": "Secret", "metadata": {"name": "webhook-token", "namespace": OPERATOR_NS},
             "data": {"token": base64.b64encode(f"{TOKEN}\n".encode()).decode()}})
    config = OperatorConfig(namespace=OPERATOR_NS, webhook_token_secret="webhook-token",
                            webhook_body_limit=4096)
    kube = api.kube()
    hook = Webhook(config, Intake(kube, config, clock=clock, retry_for=0),
                   TokenSource(config, kube))
    hook.ready = True
    async with TestClient(TestServer(hook.app())) as client:
        yield client
    hook.executor.shutdown(wait=True)


async def test_every_incident_is_stored_before_the_answer(http: TestClient,  # type: ignore[type-arg]
                                                          api: Recorder) -> None:
    response = await http.post("/alertmanager", json=alertmanager("web-5d9c-0", "web-5d9c-1"),
                               headers=AUTH)
    assert response.status == 200
    answer = await response.json()
    assert sorted(i["outcome"] for i in answer["incidents"]) == ["created", "created"]
    for recorded in answer["incidents"]:
        stored = api.get("securityincidents", recorded["namespace"], recorded["name"])
        assert stored is not None and signal_fields(stored)["signalCount"] == 1
    assert sorted(api.written()) == sorted(
        f"create securityincidents {NS}/{i['name']}" for i in answer["incidents"])


async def test_the_token_secret_is_read_once(http: TestClient,  # type: ignore[type-arg]
                                             api: Recorder) -> None:
    secret = ("GET", f"/api/v1/namespaces/{OPERATOR_NS}/secrets/webhook-token")
    for pod in ("web-5d9c-0", "web-5d9c-1", "web-5d9c-0"):
        response = await http.post("/alertmanager", json=alertmanager(pod), headers=AUTH)
        assert response.status == 200
    assert api.requests.count(secret) == 1
    wrong = await http.post("/alertmanager", json=alertmanager("web-5d9c-0"),
                            headers={"Authorization": "Bearer wrong"})
    assert wrong.status == 401 and api.requests.count(secret) == 1


async def test_a_falco_event_becomes_an_incident(http: TestClient,  # type: ignore[type-arg]
                                                 api: Recorder) -> None:
    event = {"output": "miner started", "priority": "Critical", "rule": "Crypto miner",
             "time": "2025-03-01T11:59:00.000000000Z", "source": "syscall",
             "output_fields": {"k8s.ns.name": NS, "k8s.pod.name": "web-5d9c-0"}}
    response = await http.post("/falco", json=event, headers=AUTH)
    assert response.status == 200
    (recorded,) = (await response.json())["incidents"]
    stored = api.get("securityincidents", NS, recorded["name"])
    assert stored is not None and stored["spec"]["source"] == "falco"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {TOKEN}"}])
async def test_without_the_token_nothing_is_written(http: TestClient,  # type: ignore[type-arg]
                                                    api: Recorder,
                                                    headers: dict[str, str]) -> None:
    response = await http.post("/alertmanager", json=alertmanager("web-5d9c-0"),
                               headers=headers)
    assert response.status == 401
    assert api.writes == []


@pytest.mark.parametrize(("body", "status", "error"), [
    (b"{not json", 400, "malformed JSON"),
    (json.dumps({"alerts": "nope"}).encode(), 400, "invalid AlertmanagerPayload"),
    (b"[" + b" " * 5000 + b"]", 413, "larger than the limit of 4096 bytes"),
])
async def test_a_bad_body_is_refused_and_nothing_is_written(
        http: TestClient, api: Recorder, body: bytes, status: int,  # type: ignore[type-arg]
        error: str) -> None:
    response = await http.post("/alertmanager", data=body,
                               headers={**AUTH, "Content-Type": "application/json"})
    assert response.status == status
    assert error in (await response.json())["error"]
    assert api.writes == []


async def test_an_unreachable_api_server_is_a_503_and_the_retry_stores_it(
        http: TestClient, api: Recorder) -> None:  # type: ignore[type-arg]
    api.fail("create", "securityincidents", 503, "etcdserver: leader changed", times=1)
    response = await http.post("/alertmanager", json=alertmanager("web-5d9c-0"), headers=AUTH)
    assert response.status == 503
    assert "retry later" in (await response.json())["error"]
    assert api.all("securityincidents") == []

    response = await http.post("/alertmanager", json=alertmanager("web-5d9c-0"), headers=AUTH)
    assert response.status == 200
    assert len(api.all("securityincidents")) == 1


async def test_an_incident_the_api_server_refuses_is_a_400(http: TestClient,  # type: ignore[type-arg]
                                                           api: Recorder) -> None:
    api.fail("create", "securityincidents", 422, "spec.title: Too long: may not be longer")
    response = await http.post("/alertmanager", json=alertmanager("web-5d9c-0"), headers=AUTH)
    assert response.status == 400
    assert "422 Unprocessable Entity: spec.title: Too long" in (await response.json())["error"]


async def test_ready_only_with_a_token(http: TestClient, api: Recorder) -> None:  # type: ignore[type-arg]
    assert (await http.get("/readyz")).status == 200
    assert (await http.get("/healthz")).status == 200


async def test_not_ready_when_the_token_secret_is_missing(api: Recorder, clock: Clock) -> None:
    config = OperatorConfig(namespace=OPERATOR_NS, webhook_token_secret="absent")
    kube = api.kube()
    hook = Webhook(config, Intake(kube, config, clock=clock, retry_for=0),
                   TokenSource(config, kube))
    hook.ready = True
    async with TestClient(TestServer(hook.app())) as client:
        response = await client.get("/readyz")
        assert response.status == 503
        assert "Secret firebreak-system/absent" in (await response.json())["error"]
        posted = await client.post("/alertmanager", json=alertmanager("x"), headers=AUTH)
        assert posted.status == 401
    hook.executor.shutdown(wait=True)
    assert api.writes == []


def external(**fields: Any) -> dict[str, Any]:
    return {"source": "grype", "fingerprint": "CVE-2025-0001/web", "severity": "high",
            "title": "CVE-2025-0001 in web", "alertName": "CVE-2025-0001",
            "target": {"kind": "Pod", "namespace": NS, "name": "web-5d9c-0"},
            "labels": {"team": "payments"}, "time": "2025-03-01T11:59:00Z", **fields}


async def test_a_posted_signal_opens_one_incident(http: TestClient,  # type: ignore[type-arg]
                                                  api: Recorder) -> None:
    response = await http.post("/signals", json=external(), headers=AUTH)
    assert response.status == 200
    (recorded,) = (await response.json())["incidents"]
    assert recorded["outcome"] == "created"
    stored = api.get("securityincidents", NS, recorded["name"])
    assert stored is not None
    spec = stored["spec"]
    assert spec["source"] == "external"
    assert spec["alertName"] == "CVE-2025-0001"
    assert spec["severity"] == "high"
    assert spec["target"] == {"kind": "Pod", "namespace": NS, "name": "web-5d9c-0"}
    assert spec["labels"]["source"] == "grype" and spec["labels"]["team"] == "payments"

    again = await http.post("/signals", json=external(), headers=AUTH)
    assert again.status == 200
    assert [i["name"] for i in (await again.json())["incidents"]] == [recorded["name"]]
    assert len(api.all("securityincidents")) == 1


async def test_two_senders_with_one_fingerprint_are_two_incidents(
        http: TestClient, api: Recorder) -> None:  # type: ignore[type-arg]
    for sender in ("grype", "kubescape"):
        assert (await http.post("/signals", json=external(source=sender),
                                headers=AUTH)).status == 200
    assert len(api.all("securityincidents")) == 2


@pytest.mark.parametrize(("body", "named"), [
    (external(severity="severe"), "severity"),
    (external(title=""), "title"),
    (external(source="not a name"), "source"),
    (external(target={"kind": "Pod", "name": "web-5d9c-0"}), "target"),
    (external(labels={"team": 1}), "labels.team"),
    (external(alert_name="x"), "alert_name"),
    ({k: v for k, v in external().items() if k != "fingerprint"}, "fingerprint"),
    ([external()], "body"),
])
async def test_a_malformed_signal_is_a_400_naming_the_field(
        http: TestClient, api: Recorder, body: Any, named: str) -> None:  # type: ignore[type-arg]
    response = await http.post("/signals", json=body, headers=AUTH)
    assert response.status == 400
    message = (await response.json())["error"]
    assert message.startswith("invalid ExternalSignal: ") and named in message
    assert api.writes == []


@pytest.mark.parametrize(("headers", "data", "status"), [
    ({}, json.dumps(external()), 401),
    ({**AUTH, "Content-Type": "text/plain"}, json.dumps(external()), 415),
    ({**AUTH, "Content-Type": "application/json"}, b"\xff", 400),
    ({**AUTH, "Content-Type": "application/json"}, b" " * 5000, 413),
])
async def test_posted_signals_get_the_intakes_answers(
        http: TestClient, api: Recorder, headers: dict[str, str],  # type: ignore[type-arg]
        data: Any, status: int) -> None:
    response = await http.post("/signals", data=data, headers=headers)
    assert response.status == status
    assert "error" in await response.json()
    assert api.writes == []


async def test_a_posted_signal_is_a_503_while_the_api_server_cannot_store_it(
        http: TestClient, api: Recorder) -> None:  # type: ignore[type-arg]
    api.fail("create", "securityincidents", 503, "etcdserver: leader changed", times=1)
    response = await http.post("/signals", json=external(), headers=AUTH)
    assert response.status == 503 and response.headers["Retry-After"] == "5"
    assert api.all("securityincidents") == []


async def test_the_schema_is_served_without_a_token_and_describes_what_is_accepted(
        http: TestClient) -> None:  # type: ignore[type-arg]
    response = await http.get("/signals/schema")
    assert response.status == 200
    schema = await response.json()
    assert schema["title"] == "Signal"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"source", "fingerprint", "severity", "title"}
    assert {"alertName", "target", "labels", "time", "status"} <= set(schema["properties"])
    assert schema["$defs"]["Severity"]["enum"] == ["info", "low", "medium", "high", "critical"]


async def test_each_incident_created_is_handed_on_as_stored_and_a_repeat_is_not(
        api: Recorder, clock: Clock) -> None:
    add_app(api)
    config = OperatorConfig(namespace=OPERATOR_NS, webhook_auth="none")
    kube = api.kube()
    hook = Webhook(config, Intake(kube, config, clock=clock, retry_for=0),
                   TokenSource(config, kube))
    handed: list[dict[str, Any]] = []
    hook.on_created = handed.append
    hook.ready = True
    async with TestClient(TestServer(hook.app())) as client:
        response = await client.post("/alertmanager", headers=AUTH,
                                     json=alertmanager("web-5d9c-0", "web-5d9c-1"))
        assert response.status == 200
        assert len(handed) == 2
        for body in handed:  # as stored: its resourceVersion and uid included
            stored = api.get("securityincidents", NS, body["metadata"]["name"])
            assert stored is not None and body["metadata"]["uid"] == stored["metadata"]["uid"]
            assert body["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
        # Delivered again: a repeat creates nothing, and nothing more is handed on.
        response = await client.post("/alertmanager", headers=AUTH,
                                     json=alertmanager("web-5d9c-0", "web-5d9c-1"))
        assert response.status == 200
        assert len(handed) == 2
    hook.executor.shutdown(wait=True)
