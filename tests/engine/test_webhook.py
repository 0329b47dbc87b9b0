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
        assert stored is not None and stored["status"]["signalCount"] == 1
    assert sorted(api.written()) == sorted(
        [f"create securityincidents {NS}/{i['name']}" for i in answer["incidents"]]
        + [f"patch securityincidents/status {NS}/{i['name']}" for i in answer["incidents"]])


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
