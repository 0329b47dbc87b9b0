"""The webhook against hostile and unlucky requests, over the recording API.

Every request ends 2xx, 4xx naming the problem, or a prompt 503 with Retry-After:
never a 500, and never a write for a request that was not answered 2xx. One test
per defect the intake once had (a missing namespace, a half-written notification,
deep nesting, lone surrogates, impossible names, unbounded strings, a slow or
unreachable API server, slow clients, any Content-Type), then property-based tests
(hypothesis) over arbitrary bodies, headers and label values.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
import urllib3
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from firebreak.api import signal_fields
from firebreak.config import OperatorConfig
from firebreak.intake import TARGET_PROBLEM, Intake
from firebreak.webhook import TokenSource, Webhook
from tests.engine.recorder import Recorder
from tests.engine.world import NS, OPERATOR_NS, Clock, add_app

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def alert(namespace: str = NS, pod: str = "web-5d9c-0", **labels: str) -> dict[str, Any]:
    return {"status": "firing",
            "labels": {"alertname": "CryptoMiner", "namespace": namespace, "pod": pod,
                       "severity": "critical", **labels},
            "annotations": {"summary": f"miner in {pod}"},
            "startsAt": "2025-03-01T11:59:00Z", "endsAt": "0001-01-01T00:00:00Z"}


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "status": "firing", "receiver": "firebreak", "groupLabels": {},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
            "groupKey": "{}:{}", "alerts": list(alerts)}


def world(api: Recorder) -> None:
    api.strict_namespaces = True
    for namespace in (NS, OPERATOR_NS):
        api.add({"kind": "Namespace", "metadata": {"name": namespace}})
    add_app(api)
    api.add({"kind": "Secret", "metadata": {"name": "webhook-token", "namespace": OPERATOR_NS},
             "data": {"token": base64.b64encode(TOKEN.encode()).decode()}})


def webhook(api: Recorder, clock: Clock | None = None, **settings: Any) -> Webhook:
    config = OperatorConfig(namespace=OPERATOR_NS, **{
        "webhook_token_secret": "webhook-token", "webhook_answer_seconds": 1.0,
        "webhook_read_seconds": 0.5, **settings})
    kube = api.kube()
    intake = Intake(kube, config, **({"clock": clock} if clock else {}))
    hook = Webhook(config, intake, TokenSource(config, kube))
    hook.ready = True
    return hook


Client = TestClient  # type: ignore[type-arg]


@pytest.fixture
async def http(api: Recorder, clock: Clock) -> AsyncIterator[Client]:
    world(api)
    hook = webhook(api, clock)
    async with TestClient(TestServer(hook.app())) as client:
        yield client
    hook.executor.shutdown(wait=True)


async def post(http: Client, body: Any, path: str = "/alertmanager",
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await http.post(path, data=data, headers=headers or AUTH)
    return response.status, await response.json(content_type=None), response.headers


# --- one test per defect ------------------------------------------------------------------


async def test_an_alert_about_a_missing_namespace_is_recorded(http: Client, api: Recorder) -> None:
    status, body, _ = await post(http, notification(alert("repro-missing", "web-1")))
    assert status == 200, body
    (recorded,) = body["incidents"]
    assert (recorded["namespace"], recorded["outcome"]) == (OPERATOR_NS, "created")
    stored = api.get("securityincidents", OPERATOR_NS, recorded["name"])
    assert stored is not None
    assert stored["spec"]["target"] == {"kind": "Pod", "namespace": "repro-missing",
                                        "name": "web-1"}


async def test_a_notification_is_recorded_whole(http: Client, api: Recorder) -> None:
    status, body, _ = await post(http, notification(alert(), alert("repro-missing", "web-1")))
    assert status == 200, body
    assert sorted(i["namespace"] for i in body["incidents"]) == [OPERATOR_NS, NS]
    # The sender's retry of the same notification counts nothing twice.
    status, again, _ = await post(http, notification(alert(), alert("repro-missing", "web-1")))
    assert status == 200
    assert [i["outcome"] for i in again["incidents"]] == ["repeated", "repeated"]
    assert [signal_fields(o)["signalCount"] for o in api.all("securityincidents")] == [1, 1]


async def test_one_bad_alert_refuses_the_notification_and_stores_none(
        http: Client, api: Recorder) -> None:
    bad = {**alert(pod="web-5d9c-1"), "labels": {"namespace": NS, "pod": 7}}
    status, body, _ = await post(http, notification(alert(), bad))
    assert status == 400
    assert "alerts.1.labels.pod" in body["error"]
    assert api.writes == []


@pytest.mark.parametrize("nesting", [1000, 70])
async def test_deep_nesting_is_a_400(http: Client, api: Recorder, nesting: int) -> None:
    payload = json.dumps(notification(alert()))[:-1] + ', "extra": ' + "[" * nesting \
        + "]" * nesting + "}"
    status, body, _ = await post(http, payload.encode())
    assert status == 400
    assert "nested deeper than 64 levels" in body["error"]
    assert api.writes == []


async def test_a_lone_surrogate_escape_is_replaced_not_a_500(http: Client, api: Recorder) -> None:
    payload = json.dumps(notification(alert(team="\ud800")))  # "\ud800" escaped in JSON
    assert "\\ud800" in payload
    status, body, _ = await post(http, payload.encode())
    assert status == 200, body
    stored = api.get("securityincidents", NS, body["incidents"][0]["name"])
    assert stored is not None and stored["spec"]["labels"]["team"] == "\ufffd"


async def test_encoded_surrogates_are_invalid_utf8(http: Client, api: Recorder) -> None:
    payload = json.dumps(notification(alert(team="SURROGATE"))).encode()
    status, body, _ = await post(http, payload.replace(b"SURROGATE", b"\xed\xa0\x80"))
    assert status == 400
    assert "not valid UTF-8" in body["error"]
    assert api.writes == []


@pytest.mark.parametrize(("labels", "problem"), [
    ({"namespace": "%2e%2e"}, 'namespace "%2e%2e" is not a valid namespace name'),
    ({"namespace": "UPPER_case"}, 'namespace "UPPER_case" is not a valid namespace name'),
    ({"job_name": "."}, 'Job name "." is not a valid object name'),
    ({"statefulset": "."}, 'StatefulSet name "." is not a valid object name'),
    ({"pod": ".."}, 'Pod name ".." is not a valid object name'),
])
async def test_an_impossible_target_is_recorded_without_it(
        http: Client, api: Recorder, labels: dict[str, str], problem: str) -> None:
    status, body, _ = await post(http, notification(
        {**alert(), "labels": {**alert()["labels"], **labels}}))
    assert status == 200, body
    (recorded,) = body["incidents"]
    stored = api.get("securityincidents", OPERATOR_NS, recorded["name"])
    assert stored is not None and "target" not in stored["spec"]
    assert stored["metadata"]["annotations"][TARGET_PROBLEM].startswith(problem)


async def test_a_huge_alert_name_is_stored_bounded(api: Recorder, clock: Clock) -> None:
    world(api)
    hook = webhook(api, clock, webhook_body_limit=1024 * 1024)
    async with TestClient(TestServer(hook.app())) as client:
        status, body, _ = await post(client, notification(alert(alertname="A" * 300_000)))
    hook.executor.shutdown(wait=True)
    assert status == 200, body
    stored = api.get("securityincidents", NS, body["incidents"][0]["name"])
    assert stored is not None
    assert len(stored["spec"]["alertName"]) <= 256
    assert len(json.dumps(stored)) < 40_000


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "application/octet-stream", "multipart/form-data",
                                          ""])
async def test_a_body_that_is_not_json_is_a_415(http: Client, api: Recorder,
                                                content_type: str) -> None:
    headers = {**AUTH, "Content-Type": content_type}
    status, body, _ = await post(http, notification(alert()), headers=headers)
    assert status == 415
    assert "send application/json" in body["error"]
    assert api.writes == []


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8",
                                          "Application/JSON", "application/alert+json"])
async def test_json_by_any_spelling_is_accepted(http: Client, content_type: str) -> None:
    status, body, _ = await post(http, notification(alert()),
                                 headers={**AUTH, "Content-Type": content_type})
    assert status == 200, body


def slow_api(api: Recorder, seconds: float) -> None:
    """Every request stalls ``seconds`` (or until the client's timeout, then fails as
    urllib3 does)."""
    serve = api.request

    def request(method: str, url: str, *args: Any, **kwargs: Any) -> urllib3.HTTPResponse:
        timeout = kwargs.get("timeout")
        limit = getattr(timeout, "total", None) or seconds
        time.sleep(min(seconds, limit))
        if limit < seconds:
            raise urllib3.exceptions.ReadTimeoutError(None, url, "read timed out")  # type: ignore[arg-type]
        return serve(method, url, *args, **kwargs)

    api.request = request  # type: ignore[method-assign]


@pytest.mark.parametrize("trouble", ["down", "slow"])
async def test_an_unavailable_api_server_is_a_prompt_503(http: Client, api: Recorder,
                                                         trouble: str) -> None:
    assert (await http.get("/readyz")).status == 200  # the token is read, and kept
    if trouble == "down":
        api.fail("*", "*", 503, "etcdserver: request timed out")
    else:
        slow_api(api, 30)
    started = time.monotonic()
    status, body, headers = await post(http, notification(alert()))
    elapsed = time.monotonic() - started
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert "retry later" in body["error"]
    assert elapsed < 2.5  # the answer time (1 s) and a little grace
    assert api.all("securityincidents") == []


async def test_a_token_secret_unreadable_for_now_is_a_503_not_a_401(
        http: Client, api: Recorder) -> None:
    api.fail("get", "secrets", 503, "etcdserver: leader changed")
    started = time.monotonic()
    status, body, headers = await post(http, notification(alert()))
    assert (status, headers["Retry-After"]) == (503, "1")
    assert "cannot check the bearer token now" in body["error"]
    assert time.monotonic() - started < 2.5
    assert api.writes == []
    api.failures.clear()
    status, _, _ = await post(http, notification(alert()))
    assert status == 200


async def test_a_retry_after_a_503_counts_once(http: Client, api: Recorder) -> None:
    # A second firing arrives; its count fails: the sender hears 503 and retries.
    status, _, _ = await post(http, notification(alert()))
    assert status == 200
    later = {**alert(), "startsAt": "2025-03-01T13:00:00Z"}
    api.fail("patch", "securityincidents", 503, "etcdserver: leader changed",
             subresource="status")
    status, _, _ = await post(http, notification(later))
    assert status == 503
    api.failures.clear()
    status, body, _ = await post(http, notification(later))
    assert status == 200
    # "repeated" when the first attempt's count landed after its 503 was sent.
    assert body["incidents"][0]["outcome"] in ("updated", "repeated")
    (stored,) = api.all("securityincidents")
    assert stored["status"]["signalCount"] == 2


@pytest.mark.parametrize(("code", "answer"), [(403, 503), (404, 503), (409, 503), (422, 400),
                                              (400, 400)])
async def test_what_the_api_server_refuses_is_never_a_500(
        http: Client, api: Recorder, code: int, answer: int) -> None:
    api.fail("create", "securityincidents", code, "refused")
    status, body, headers = await post(http, notification(alert()))
    assert status == answer, body
    assert ("Retry-After" in headers) == (answer == 503)


async def test_an_unexpected_error_is_a_503(http: Client, api: Recorder,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> None:
        raise KeyError("name")

    monkeypatch.setattr(Intake, "prepare", broken)
    status, body, headers = await post(http, notification(alert()))
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert "internal error" in body["error"]


async def dribble(seconds: float) -> AsyncIterator[bytes]:
    payload = json.dumps(notification(alert())).encode()
    for i in range(0, len(payload), 8):
        yield payload[i:i + 8]
        await asyncio.sleep(seconds / (len(payload) / 8))


async def test_a_slow_client_is_cut_off_with_a_408(http: Client, api: Recorder) -> None:
    started = time.monotonic()
    response = await http.post("/alertmanager", data=dribble(5.0), headers=AUTH)
    assert response.status == 408
    assert time.monotonic() - started < 2.0
    assert "not received within 0.5s" in (await response.json())["error"]
    assert api.writes == []


async def test_a_flood_waits_for_a_slot_then_gets_503(api: Recorder, clock: Clock) -> None:
    world(api)
    hook = webhook(api, clock, webhook_max_requests=2, webhook_read_seconds=3.0,
                   webhook_answer_seconds=0.5)
    async with TestClient(TestServer(hook.app())) as client:
        slow = [asyncio.create_task(client.post("/alertmanager", data=dribble(2.0),
                                                headers=AUTH)) for _ in range(2)]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        status, body, headers = await post(client, notification(alert()))
        waited = time.monotonic() - started
        assert (status, headers["Retry-After"]) == (503, "1")
        assert "too many requests in flight" in body["error"]
        assert 0.4 < waited < 1.5
        assert [r.status for r in await asyncio.gather(*slow)] == [200, 200]
        status, _, _ = await post(client, notification(alert()))  # a slot again
        assert status == 200
    hook.executor.shutdown(wait=True)


# --- properties ------------------------------------------------------------------------------


class Served:
    """The webhook on a real socket, its loop in a thread: hypothesis drives it with
    plain blocking HTTP, one connection per request."""

    def __init__(self, hook: Webhook, api: Recorder) -> None:
        self.api = api
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(hook.app())
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def __repr__(self) -> str:
        return f"<webhook on port {self.port}>"

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        connection = HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def close(self) -> None:
        async def stop() -> None:
            await self.runner.cleanup()
            current = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not current]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    api = Recorder()
    world(api)
    token = tmp_path_factory.mktemp("token") / "token"
    token.write_text(TOKEN)
    hook = webhook(api, webhook_token_secret=None, webhook_token_file=Path(token),
                   webhook_body_limit=16 * 1024)
    server = Served(hook, api)
    yield server
    server.close()
    hook.executor.shutdown(wait=True)


def answer(served: Served, path: str, body: bytes, headers: dict[str, str]) -> int:
    """POST, and check the property: 2xx or 4xx (the API is healthy here, so no 503),
    and nothing written unless the answer was 2xx."""
    before = len(served.api.writes)
    try:
        status = served.post(path, body, headers)
    except ValueError:  # a header http.client itself refuses to send
        assume(False)
        raise
    assert 200 <= status < 300 or 400 <= status < 500, status
    if status >= 300:
        assert len(served.api.writes) == before, f"{status} after writing"
    return status


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)
LABEL_KEYS = st.sampled_from([
    "alertname", "namespace", "pod", "deployment", "statefulset", "daemonset", "job_name",
    "node", "instance", "job", "severity", "priority", "k8s_ns_name", "k8s_pod_name"]) | st.text()
NAMES = st.sampled_from([NS, "repro-missing", ".", "..", "UPPER_case", "%2e%2e", "web-5d9c-0",
                         "a" * 300, "12", "<NA>", "", "\ud800", "\x00"]) | st.text()
CONTENT_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8",
                                 "text/plain", "application/x-www-form-urlencoded",
                                 "application/problem+json"]) | st.text(max_size=30)
HEADERS = st.dictionaries(
    st.sampled_from(["Content-Encoding", "Accept", "X-Forwarded-For", "Expect", "Accept-Encoding",
                     "User-Agent", "Idempotency-Key"]),
    st.sampled_from(["gzip", "deflate", "br", "identity", "x-bogus", "100-continue", "*/*"])
    | st.text(max_size=40), max_size=3)
PATHS = st.sampled_from(["/alertmanager", "/falco", "/signals"])
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@SETTINGS
@given(path=PATHS, body=st.binary(max_size=2048) | JSON.map(lambda v: json.dumps(v).encode()),
       content_type=CONTENT_TYPES, extra=HEADERS)
def test_any_body_and_headers(served: Served, path: str, body: bytes,
                              content_type: str, extra: dict[str, str]) -> None:
    answer(served, path, body, {**extra, "Authorization": f"Bearer {TOKEN}",
                                "Content-Type": content_type})


@SETTINGS
@given(labels=st.dictionaries(LABEL_KEYS, NAMES, max_size=8),
       annotations=st.dictionaries(st.text(), st.text(), max_size=3),
       fingerprint=st.none() | st.text(), starts=st.sampled_from(
           ["2025-03-01T11:59:00Z", "0001-01-01T00:00:00Z", "not a time", None]),
       status=st.sampled_from(["firing", "resolved", "other"]))
def test_any_alertmanager_labels(served: Served, labels: dict[str, str],
                                 annotations: dict[str, str], fingerprint: str | None,
                                 starts: str | None, status: str) -> None:
    one: dict[str, Any] = {"status": status, "labels": labels, "annotations": annotations}
    if fingerprint is not None:
        one["fingerprint"] = fingerprint
    if starts is not None:
        one["startsAt"] = starts
    body = json.dumps({**notification(one), "status": status}).encode()
    code = answer(served, "/alertmanager", body, AUTH)
    valid = status != "other" and starts != "not a time"
    assert (code == 200) == valid, code


FIELD_VALUES = st.none() | st.booleans() | st.integers() | NAMES | st.lists(
    st.none() | st.integers() | NAMES, max_size=3)


@SETTINGS
@given(fields=st.dictionaries(
    st.sampled_from(["k8s.ns.name", "k8s.pod.name", "container.id", "ka.target.namespace",
                     "ka.target.name", "ka.target.resource", "proc.cmdline"]) | st.text(),
    FIELD_VALUES, max_size=6),
    rule=st.text(), hostname=st.none() | st.text(),
    priority=st.sampled_from(["Critical", "warning", "info", "bogus"]))
def test_any_falco_fields(served: Served, fields: dict[str, Any], rule: str,
                          hostname: str | None, priority: str) -> None:
    event = {"output": "x", "priority": priority, "rule": rule, "output_fields": fields,
             "time": "2025-03-01T11:59:00.123456789Z", "hostname": hostname}
    code = answer(served, "/falco", json.dumps(event).encode(), AUTH)
    assert (code == 200) == (rule != "" and priority != "bogus"), code


@SETTINGS
@given(namespace=NAMES, name=NAMES, fingerprint=st.text(), title=st.text(),
       labels=st.dictionaries(LABEL_KEYS, NAMES, max_size=8),
       severity=st.sampled_from(["critical", "info", "Critical", "bogus"]),
       sender=st.sampled_from(["grype", "kube-bench", "in-house.check_1"]) | st.text(max_size=70))
def test_any_posted_signal(served: Served, namespace: str, name: str, fingerprint: str,
                           title: str, labels: dict[str, str], severity: str,
                           sender: str) -> None:
    posted = {"source": sender, "fingerprint": fingerprint, "severity": severity,
              "title": title, "labels": labels,
              "target": {"kind": "Pod", "namespace": namespace, "name": name}}
    code = answer(served, "/signals", json.dumps(posted).encode(), AUTH)
    valid = (bool(fingerprint) and bool(title) and bool(name) and bool(namespace)
             and severity in ("critical", "info")
             and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", sender) is not None)
    assert (code == 200) == valid, code


POSTED_FIELDS = {"source", "fingerprint", "severity", "title", "description", "alertName",
                 "target", "labels", "status", "time"}
OPTIONAL_FIELDS = {
    "alertName": st.none() | st.text() | st.integers(),
    "description": st.none() | st.text() | st.lists(st.text(), max_size=2),
    "status": st.sampled_from(["firing", "resolved", "Firing", "pending"]),
    "time": st.sampled_from(["2025-03-01T11:59:00Z", "2025-03-01T11:59:00+02:00",
                             "2025-03-01T11:59:00", "yesterday"]),
    "target": st.fixed_dictionaries({
        "kind": st.sampled_from(["Pod", "Deployment", "Node", "CronJob", "pod"]),
        "namespace": st.sampled_from([NS, None]),
        "name": st.sampled_from(["web-5d9c-0", "", "UPPER_case"])}),
    "labels": st.dictionaries(LABEL_KEYS, st.text() | st.integers(), max_size=4),
}


def _optional_field_is_valid(key: str, value: Any) -> bool:
    """What the published schema says of each optional field, written out."""
    if key in ("alertName", "description"):
        return value is None or isinstance(value, str)
    if key == "status":
        return value in ("firing", "resolved")
    if key == "time":
        return value.endswith(("Z", "+02:00"))
    if key == "target":
        kinds = ("Pod", "Deployment", "Node")
        return (value["kind"] in kinds and value["name"] != ""
                and (value["namespace"] is None) == (value["kind"] == "Node"))
    return all(isinstance(v, str) for v in value.values())  # labels


@SETTINGS
@given(optional=st.fixed_dictionaries({}, optional=OPTIONAL_FIELDS),
       unknown=st.none() | st.sampled_from(["alert_name", "Severity", "match"]) | st.text())
def test_any_optional_fields_of_a_posted_signal(served: Served, optional: dict[str, Any],
                                                unknown: str | None) -> None:
    assume(unknown not in POSTED_FIELDS)
    posted = {"source": "grype", "fingerprint": "f", "severity": "high", "title": "t",
              **optional, **({} if unknown is None else {unknown: "x"})}
    code = answer(served, "/signals", json.dumps(posted).encode(), AUTH)
    valid = unknown is None and all(_optional_field_is_valid(k, v) for k, v in optional.items())
    assert (code == 200) == valid, (code, posted)


@SETTINGS
@given(token=st.text(max_size=20), scheme=st.sampled_from(["Bearer", "bearer", "Basic", ""]))
def test_a_wrong_token_is_always_a_401(served: Served, token: str,
                                       scheme: str) -> None:
    assume(not (token.strip() == TOKEN and scheme.lower() == "bearer"))
    body = json.dumps(notification(alert())).encode()
    # Control characters make the header itself malformed: aiohttp's parser says 400.
    malformed = any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in token)
    assert answer(served, "/alertmanager", body,
                  {"Authorization": f"{scheme} {token}", "Content-Type": "application/json"}
                  ) == (400 if malformed else 401)


@SETTINGS
@given(body=st.binary(max_size=512))
def test_compressed_bodies(served: Served, body: bytes) -> None:
    for encoded, encoding in ((zlib.compress(body), "deflate"), (body, "gzip")):
        answer(served, "/falco", encoded, {**AUTH, "Content-Encoding": encoding})


def test_never_a_500_for_compressed_garbage_bombs(served: Served) -> None:
    bomb = zlib.compress(b"[" * 5_000_000)  # 5 MB once inflated, over the body limit
    assert answer(served, "/alertmanager", bomb, {**AUTH, "Content-Encoding": "deflate"}) == 413


