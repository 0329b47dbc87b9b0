"""The alert webhook on a real API server: auth, validation, limits, dedup, 503, and
``POST /signals``.

The server runs in-process (aiohttp's test server) with the real intake; every
refused request is checked to have created nothing, and the next good request to
still work.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from kubernetes import client

from firebreak.api import signal_fields
from firebreak.config import OperatorConfig
from firebreak.intake import Intake
from firebreak.kube import Kube
from firebreak.webhook import TokenSource, Webhook
from tests.helpers import GROUP, OPERATOR_NS, VERSION

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]
TOKEN = "s3cret-token"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"


def alert(namespace: str, pod: str = "web-1", name: str = "CryptoMiner",
          status: str = "firing", fingerprint: str | None = None) -> dict[str, Any]:
    labels = {"alertname": name, "namespace": namespace, "pod": pod, "severity": "critical"}
    body: dict[str, Any] = {"status": status, "labels": labels,
                            "annotations": {"summary": f"{name} in {pod}"},
                            "startsAt": "2026-11-25T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z"}
    if fingerprint:
        body["fingerprint"] = fingerprint
    return body


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing",
            "receiver": "firebreak", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://alertmanager", "alerts": list(alerts)}


class Client:
    def __init__(self, session: ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def post(self, path: str, body: bytes | dict[str, Any] | list[Any],
                   token: str | None = TOKEN, scheme: str = "Bearer") -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"{scheme} {token}"
        async with self.session.post(self.base + path, data=data, headers=headers) as response:
            return response.status, await response.json(content_type=None)


@pytest.fixture
async def webhook(kube: Kube, tmp_path: Path, cluster: Any) -> AsyncIterator[Client]:
    cluster.kubectl("apply", "-f", "manifests/namespace.yaml")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = OperatorConfig(namespace=OPERATOR_NS, webhook_token_file=token_file,
                            webhook_body_limit=64 * 1024)
    hook = Webhook(config, Intake(kube, config), TokenSource(config, kube))
    server = TestServer(hook.app(), host="127.0.0.1")
    await server.start_server()
    hook.ready = True
    async with ClientSession() as session:
        yield Client(session, str(server.make_url("")))
    await server.close()


def count(custom: client.CustomObjectsApi, namespace: str) -> int:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents")
    return len(items["items"])


async def test_a_good_alert_is_stored_before_the_answer(
    webhook: Client, custom: client.CustomObjectsApi, namespace: str
) -> None:
    status, body = await webhook.post("/alertmanager", payload(alert(namespace), alert(
        namespace, pod="web-2")))
    assert status == 200
    assert [i["outcome"] for i in body["incidents"]] == ["created", "created"]
    for incident in body["incidents"]:
        stored = custom.get_namespaced_custom_object(GROUP, VERSION, incident["namespace"],
                                                     "securityincidents", incident["name"])
        assert signal_fields(stored)["signalCount"] == 1
    assert count(custom, namespace) == 2  # one incident per alert


def falco_event(namespace: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(
        (FIXTURES / "falco_TerminalShellInContainer_default-kubecon_2023.json").read_text())
    event["output_fields"]["k8s.ns.name"] = namespace
    return event


async def test_falco_event_is_stored(webhook: Client, custom: client.CustomObjectsApi,
                                     namespace: str) -> None:
    status, body = await webhook.post("/falco", falco_event(namespace))
    assert status == 200, body
    (incident,) = body["incidents"]
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents",
                                                 incident["name"])
    assert stored["spec"]["source"] == "falco"
    assert stored["spec"]["target"] == {"kind": "Pod", "namespace": namespace, "name": "kubecon"}
    assert stored["spec"]["labels"]["evt_time"] == "1685022245478445995"  # exact, > 2**53


BAD: list[tuple[str, str, Callable[[str], Any], dict[str, Any], int, str]] = [
    ("no token", "/alertmanager", lambda ns: payload(alert(ns)), {"token": None}, 401, "bearer"),
    ("wrong token", "/alertmanager", lambda ns: payload(alert(ns)), {"token": "guess"}, 401, "bearer"),
    ("basic auth", "/alertmanager", lambda ns: payload(alert(ns)),
     {"scheme": "Basic", "token": TOKEN}, 401, "bearer"),
    ("falco no token", "/falco", lambda ns: {}, {"token": None}, 401, "bearer"),
    ("malformed JSON", "/alertmanager", lambda ns: b'{"alerts": [', {}, 400, "malformed JSON"),
    ("not an object", "/alertmanager", lambda ns: [1, 2], {}, 400, "AlertmanagerPayload"),
    ("alerts not a list", "/alertmanager", lambda ns: {**payload(alert(ns)), "alerts": "x"}, {}, 400,
     "alerts"),
    ("no alerts", "/alertmanager", lambda ns: {k: v for k, v in payload(alert(ns)).items()
                                               if k != "alerts"}, {}, 400, "alerts"),
    ("labels not strings", "/alertmanager",
     lambda ns: payload({**alert(ns), "labels": {"namespace": ns, "pod": 7}}), {}, 400, "labels"),
    ("bad status", "/alertmanager", lambda ns: payload({**alert(ns), "status": "burning"}), {}, 400,
     "status"),
    ("falco without rule", "/falco", lambda ns: {"output": "x", "priority": "Critical"}, {}, 400,
     "rule"),
    ("oversized", "/alertmanager",
     lambda ns: payload({**alert(ns), "annotations": {"summary": "x" * 70_000}}), {}, 413, ""),
]


@pytest.mark.parametrize(("case", "path", "make_body", "auth", "code", "says"), BAD,
                         ids=[b[0] for b in BAD])
async def test_bad_requests_change_nothing(
    webhook: Client, custom: client.CustomObjectsApi, namespace: str, case: str, path: str,
    make_body: Callable[[str], Any], auth: dict[str, Any], code: int, says: str,
) -> None:
    status, body = await webhook.post(path, make_body(namespace), **auth)
    assert status == code, body
    if says:
        assert says.lower() in json.dumps(body).lower()
    assert count(custom, namespace) == 0
    # ... and the server keeps serving.
    status, _ = await webhook.post("/alertmanager", payload(alert(namespace)))
    assert status == 200
    assert count(custom, namespace) == 1


async def test_fifty_concurrent_firings_count_fifty(
    webhook: Client, custom: client.CustomObjectsApi, namespace: str
) -> None:
    def firing(minute: int) -> dict[str, Any]:
        return payload({**alert(namespace, fingerprint="0123456789abcdef"),
                        "startsAt": f"2026-11-25T10:{minute:02}:00Z"})

    results = await asyncio.gather(*(webhook.post("/alertmanager", firing(i))
                                     for i in range(50)))
    assert [s for s, _ in results] == [200] * 50
    names = {b["incidents"][0]["name"] for _, b in results}
    assert len(names) == 1
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents",
                                                 names.pop())
    assert stored["status"]["signalCount"] == 50
    assert len(stored["status"]["signalTimes"]) == 16  # the latest, for recognising repeats
    assert count(custom, namespace) == 1


async def test_fifty_concurrent_repeats_of_one_delivery_count_once(
    webhook: Client, custom: client.CustomObjectsApi, namespace: str
) -> None:
    """Alertmanager's retries and repeated notifications carry the same alert, fired at
    the same time: one occurrence, counted once, whichever delivery lands first."""
    same = payload(alert(namespace, fingerprint="0123456789abcdef"))
    results = await asyncio.gather(*(webhook.post("/alertmanager", same) for _ in range(50)))
    assert [s for s, _ in results] == [200] * 50
    outcomes = sorted(b["incidents"][0]["outcome"] for _, b in results)
    assert outcomes.count("created") == 1 and outcomes.count("updated") == 0
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents",
                                                 results[0][1]["incidents"][0]["name"])
    assert signal_fields(stored)["signalCount"] == 1
    assert count(custom, namespace) == 1


async def test_health_and_readiness(webhook: Client) -> None:
    async with webhook.session.get(webhook.base + "/healthz") as r:
        assert r.status == 200
    async with webhook.session.get(webhook.base + "/readyz") as r:
        assert r.status == 200


async def test_unreachable_api_server_gets_503(tmp_path: Path) -> None:
    """Nothing is promised when nothing could be stored: the sender must retry."""
    configuration = client.Configuration()
    configuration.host = "https://127.0.0.1:1"  # nothing listens there
    config = OperatorConfig(namespace=OPERATOR_NS, webhook_auth="none")
    hook = Webhook(config, Intake(Kube(client.ApiClient(configuration)), config, retry_for=0.5),
                   TokenSource(config, Kube(client.ApiClient(configuration))))
    server = TestServer(hook.app(), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as session:
            status, body = await Client(session, str(server.make_url(""))).post(
                "/alertmanager", payload(alert("shop")), token=None)
        assert status == 503
        assert "retry" in body["error"]
    finally:
        await server.close()


async def test_token_from_a_secret_and_tls(kube: Kube, core: client.CoreV1Api,
                                           cluster: Any, tmp_path: Path) -> None:
    """The token can live in a Secret of the operator's namespace, and the webhook can
    serve HTTPS with certificate files."""
    import base64
    import ssl

    cluster.kubectl("apply", "-f", "manifests/namespace.yaml")
    name = f"webhook-token-{tmp_path.name[-8:].lower().replace('_', '-')}"
    core.create_namespaced_secret(OPERATOR_NS, client.V1Secret(
        metadata=client.V1ObjectMeta(name=name),
        data={"token": base64.b64encode(b"from-a-secret").decode()}))
    # The local control plane's serving certificate is valid for 127.0.0.1.
    config = OperatorConfig(namespace=OPERATOR_NS, webhook_token_secret=name,
                            webhook_address="127.0.0.1:0",
                            webhook_tls_cert_file=cluster.pki / "apiserver.crt",
                            webhook_tls_key_file=cluster.pki / "apiserver.key")
    hook = Webhook(config, Intake(kube, config), TokenSource(config, kube))
    await hook.start()
    try:
        assert hook._runner is not None
        port = hook._runner.addresses[0][1]
        trust = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
        async with ClientSession() as session:
            for token, expected in (("from-a-secret", 400), ("wrong", 401)):
                async with session.post(f"https://127.0.0.1:{port}/alertmanager", data=b"{}",
                                        headers={"Authorization": f"Bearer {token}",
                                                 "Content-Type": "application/json"},
                                        ssl=trust) as response:
                    # 400: authenticated, then refused as an empty payload.
                    assert response.status == expected
            async with session.get(f"https://127.0.0.1:{port}/readyz", ssl=trust) as response:
                assert response.status == 200
    finally:
        await hook.stop()
        core.delete_namespaced_secret(name, OPERATOR_NS)


# --- POST /signals: the documented shape opens an incident the CRDs accept
# (spec.source: external), once; a malformed one is a 400 naming the field.


def finding(namespace: str, **fields: Any) -> dict[str, Any]:
    """The README's example, about this namespace."""
    return {"source": "kube-bench", "fingerprint": f"5.2.1/{namespace}/storefront",
            "severity": "critical", "title": "Privileged container in storefront",
            "alertName": "5.2.1", "labels": {"team": "payments"},
            "target": {"kind": "Deployment", "namespace": namespace, "name": "storefront"},
            **fields}


async def test_a_posted_signal_opens_one_incident(
    webhook: Client, custom: client.CustomObjectsApi, namespace: str
) -> None:
    status, body = await webhook.post("/signals", finding(namespace))
    assert status == 200, body
    (incident,) = body["incidents"]
    assert incident["outcome"] == "created"
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents",
                                                 incident["name"])
    assert stored["spec"]["source"] == "external"
    assert stored["spec"]["alertName"] == "5.2.1"
    assert stored["spec"]["labels"]["source"] == "kube-bench"
    assert stored["spec"]["labels"]["team"] == "payments"

    status, again = await webhook.post("/signals", finding(namespace))
    assert status == 200
    assert [i["name"] for i in again["incidents"]] == [incident["name"]]
    assert count(custom, namespace) == 1


@pytest.mark.parametrize(("change", "named"), [
    ({"severity": "urgent"}, "severity"),
    ({"target": {"kind": "Pod", "name": "web-1"}}, "target"),
    ({"labels": {"team": ["payments"]}}, "labels.team"),
    ({"tittle": "typo"}, "tittle"),
])
async def test_a_malformed_signal_is_a_400_naming_the_field(
    webhook: Client, custom: client.CustomObjectsApi, namespace: str,
    change: dict[str, Any], named: str,
) -> None:
    status, body = await webhook.post("/signals", finding(namespace, **change))
    assert status == 400
    assert body["error"].startswith("invalid ExternalSignal: ") and named in body["error"]
    assert count(custom, namespace) == 0
