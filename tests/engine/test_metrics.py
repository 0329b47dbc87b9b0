"""Metrics as the operator's code paths report them: an incident contained and resolved
by the engine, webhook requests, and API calls retried (over the recording API)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from firebreak import metrics
from firebreak.config import OperatorConfig
from firebreak.engine import Engine
from firebreak.intake import Intake
from firebreak.kube import Kube, TemporaryApiError, call
from firebreak.webhook import TokenSource, Webhook
from tests.engine.recorder import Recorder
from tests.engine.world import (
    NS,
    OPERATOR_NS,
    Clock,
    add_app,
    add_incident,
    add_nodes,
    playbook,
    step,
)


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_an_incident_moves_time_to_contain_steps_and_reverts(
        api: Recorder, engine: Engine, clock: Clock) -> None:
    add_nodes(api, "node-a", "node-b")
    add_app(api)
    add_incident(api)
    api.objects[("securityincidents", NS, "miner")]["status"] = {
        "firstSeen": "2025-03-01T11:59:30Z"}  # 30 s before the engine's clock
    label = f"{OPERATOR_NS}/metrics-test"
    books = [playbook("metrics-test", step("isolate", "isolateNetwork"),
                      step("mark", "label", labels={"seen": "yes"}))]
    counts = (value("firebreak_time_to_contain_seconds_count", playbook=label),
              value("firebreak_steps_total", action="isolateNetwork", outcome="applied"),
              value("firebreak_reverts_total", action="label", outcome="reverted"))
    engine.reconcile(NS, "miner", books)
    clock.advance(5)
    engine.reconcile(NS, "miner", books)  # nothing new: nothing counted twice
    assert value("firebreak_time_to_contain_seconds_count", playbook=label) == counts[0] + 1
    # 30 s from the first signal (buckets are upper bounds, included)
    assert value("firebreak_time_to_contain_seconds_sum", playbook=label) >= 30.0
    assert value("firebreak_time_to_contain_seconds_bucket", playbook=label, le="10.0") == \
        counts[0]
    assert value("firebreak_time_to_contain_seconds_bucket", playbook=label, le="30.0") == \
        counts[0] + 1
    assert value("firebreak_steps_total", action="isolateNetwork", outcome="applied") == \
        counts[1] + 1
    api.objects[("securityincidents", NS, "miner")]["spec"]["resolution"] = {
        "reason": "done", "by": "alice"}
    engine.reconcile(NS, "miner", books)
    assert value("firebreak_reverts_total", action="label", outcome="reverted") == counts[2] + 1


def test_temporary_api_failures_are_counted_as_retries(api: Recorder, kube: Kube) -> None:
    before = value("firebreak_api_retries_total", code="503")
    api.fail("get", "pods", 503, times=2)
    api.add({"kind": "Pod", "metadata": {"name": "p", "namespace": NS},
             "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
    call(kube.core.read_namespaced_pod, "p", NS)
    assert value("firebreak_api_retries_total", code="503") == before + 2
    api.fail("get", "pods", 503)
    with pytest.raises(TemporaryApiError):
        call(kube.core.read_namespaced_pod, "p", NS, retry_for=0)
    assert value("firebreak_api_retries_total", code="503") == before + 2  # no retry: not counted


@pytest.fixture
async def http(api: Recorder, clock: Clock) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    add_app(api)
    config = OperatorConfig(namespace=OPERATOR_NS, webhook_auth="none")
    kube = api.kube()
    hook = Webhook(config, Intake(kube, config, clock=clock, retry_for=0),
                   TokenSource(config, kube))
    hook.ready = True
    async with TestClient(TestServer(hook.app())) as client:
        yield client
    hook.executor.shutdown(wait=True)


async def test_webhook_requests_are_counted_by_endpoint_and_status(
        http: TestClient) -> None:  # type: ignore[type-arg]
    def counts() -> list[float]:
        return [value("firebreak_webhook_requests_total", endpoint="/falco", code="400"),
                value("firebreak_webhook_requests_total", endpoint="/healthz", code="200"),
                value("firebreak_webhook_requests_total", endpoint="/signals/schema", code="200"),
                value("firebreak_webhook_requests_total", endpoint="other", code="404"),
                value("firebreak_webhook_requests_total", endpoint="other", code="405"),
                value("firebreak_webhook_request_duration_seconds_count", endpoint="/falco")]

    before = counts()
    assert (await http.post("/falco", data=b"{", headers={"Content-Type": "application/json"}
                            )).status == 400
    assert (await http.get("/healthz")).status == 200
    assert (await http.get("/signals/schema")).status == 200
    # Whatever path is sent, the label is a route of the webhook's or "other".
    assert (await http.get("/no/such/thing/" + "x" * 100)).status == 404
    assert (await http.get("/falco")).status == 405  # no route for that method
    assert counts() == [n + 1 for n in before]
    assert value("firebreak_queue_depth", queue="intake") == 0
