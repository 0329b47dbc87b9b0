"""The error taxonomy, by class, from the API server's real answers (through the
generated client and the recording API): callers catch ``NotFound``, ``Conflict``
and the rest, never compare status codes."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from firebreak.controller import Stored
from firebreak.kube import (
    STRATEGIC_MERGE_PATCH,
    AlreadyExists,
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    Handoff,
    Invalid,
    Kube,
    NotFound,
    PermanentApiError,
    TemporaryApiError,
    call,
    path,
    raw,
    read_raw,
)
from tests.engine.recorder import Recorder

NS = "shop"
POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": NS},
       "spec": {"containers": [{"name": "c", "image": "nginx"}]}}


@pytest.mark.parametrize("direct", [False, True], ids=["generated", "direct"])
@pytest.mark.parametrize(("status", "error"), [
    (400, BadRequest), (403, Forbidden), (404, NotFound), (409, Conflict), (410, Gone),
    (422, Invalid), (401, PermanentApiError),
])
def test_permanent_errors_are_told_apart_by_class(api: Recorder, kube: Kube, status: int,
                                                  error: type[ApiError], direct: bool) -> None:
    api.fail("get", "pods", status, "told so")
    with pytest.raises(error) as raised:
        if direct:  # the operator's own requests (Kube.request)
            kube.request("GET", path("v1", "pods", NS, "p"))
        else:
            call(kube.core.read_namespaced_pod, "p", NS)
    assert type(raised.value) is error
    assert isinstance(raised.value, PermanentApiError)
    assert raised.value.status == status
    assert str(raised.value).endswith(": told so")


@pytest.mark.usefixtures("no_retries")
@pytest.mark.parametrize("status", [429, 500, 503, 504])
def test_temporary_errors(api: Recorder, kube: Kube, status: int) -> None:
    api.fail("get", "pods", status, "busy")
    with pytest.raises(TemporaryApiError):
        call(kube.core.read_namespaced_pod, "p", NS)


def test_a_name_taken_is_already_exists_and_create_is_idempotent(api: Recorder,
                                                                 kube: Kube) -> None:
    assert kube.create(path("v1", "pods", NS), POD) is not None
    with pytest.raises(AlreadyExists):
        call(kube.core.create_namespaced_pod, NS, POD)
    assert kube.create(path("v1", "pods", NS), POD) is None
    assert api.written() == [f"create pods {NS}/p"]


def test_a_failed_precondition_is_a_conflict_not_already_exists(api: Recorder,
                                                                 kube: Kube) -> None:
    call(kube.core.create_namespaced_pod, NS, POD)
    options = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": "another"}}
    with pytest.raises(Conflict) as raised:
        kube.remove(path("v1", "pods", NS, "p"), options)
    assert not isinstance(raised.value, AlreadyExists)
    assert api.get("pods", NS, "p") is not None


def test_absent_objects_read_as_none_and_delete_as_not_existing(api: Recorder,
                                                                kube: Kube) -> None:
    assert kube.read(path("v1", "pods", NS, "p")) is None
    assert read_raw(kube.core.read_namespaced_pod, "p", NS) is None
    assert kube.remove(path("v1", "pods", NS, "p")) is False
    call(kube.core.create_namespaced_pod, NS, POD)
    assert raw(kube.core.read_namespaced_pod, "p", NS)["metadata"]["name"] == "p"
    assert kube.remove(path("v1", "pods", NS, "p")) is True
    # Only 404 means absent: any other refusal is raised.
    api.fail("get", "pods", 403, "forbidden")
    with pytest.raises(Forbidden):
        read_raw(kube.core.read_namespaced_pod, "p", NS)


# --- the direct requests of the hot path ----------------------------------------------


def test_paths_name_the_group_the_namespace_and_quote_names() -> None:
    assert path("v1", "pods", NS, "web-0") == "/api/v1/namespaces/shop/pods/web-0"
    assert path("v1", "nodes", name="n-1") == "/api/v1/nodes/n-1"
    assert path("networking.k8s.io/v1", "networkpolicies", NS) == \
        "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies"
    assert path("firebreak.dev/v1alpha1", "securityincidents", NS, "a/b?c", "status") == \
        "/apis/firebreak.dev/v1alpha1/namespaces/shop/securityincidents/a%2Fb%3Fc/status"


@pytest.mark.usefixtures("no_retries")
def test_a_direct_request_is_retried_then_raised_temporary(api: Recorder, kube: Kube) -> None:
    api.fail("get", "pods", 503, "busy")
    with pytest.raises(TemporaryApiError):
        kube.request("GET", path("v1", "pods", NS, "p"))


def test_a_direct_request_retries_a_temporary_failure(api: Recorder, kube: Kube) -> None:
    call(kube.core.create_namespaced_pod, NS, POD)
    api.fail("get", "pods", 503, "busy", times=1)
    assert kube.request("GET", path("v1", "pods", NS, "p"), retry_for=5.0)["metadata"][
        "name"] == "p"
    assert api.requests.count(("GET", f"/api/v1/namespaces/{NS}/pods/p")) == 2


def test_direct_reads_creates_and_patches(api: Recorder, kube: Kube) -> None:
    pods = path("v1", "pods", NS)
    assert kube.read(path("v1", "pods", NS, "p")) is None
    created = kube.create(pods, POD)
    assert created is not None and created["metadata"]["uid"]
    assert kube.create(pods, POD) is None  # the name is taken: idempotent
    # An object patch is a merge patch unless told otherwise; a list is a JSON Patch.
    kube.request("PATCH", path("v1", "pods", NS, "p"), {"metadata": {"labels": {"a": "1"}}})
    kube.request("PATCH", path("v1", "pods", NS, "p"),
                 {"metadata": {"labels": {"b": "2"}}}, content_type=STRATEGIC_MERGE_PATCH)
    kube.request("PATCH", path("v1", "pods", NS, "p"),
                 [{"op": "replace", "path": "/spec/nodeName", "value": "n-1"}])
    assert [w.content_type for w in api.writes] == [
        "application/json", "application/merge-patch+json",
        "application/strategic-merge-patch+json", "application/json-patch+json"]
    stored = kube.read(path("v1", "pods", NS, "p"))
    assert stored is not None and stored["metadata"]["labels"] == {"a": "1", "b": "2"}
    assert stored["spec"]["nodeName"] == "n-1"


def test_a_direct_request_carries_the_credentials_and_the_user_agent(kube: Kube) -> None:
    seen: list[dict[str, str]] = []
    original = kube.api_client.rest_client.pool_manager

    class Spy:
        def request(self, method: str, url: str, **kwargs: Any) -> Any:
            seen.append(kwargs["headers"])
            return original.request(method, url, **kwargs)

    kube.api_client.configuration.api_key = {"authorization": "Bearer t0ken"}
    kube.api_client.user_agent = "firebreak/test (replica-a)"
    kube.api_client.rest_client.pool_manager = Spy()
    kube.read(path("v1", "pods", NS, "p"))
    assert seen[0]["authorization"] == "Bearer t0ken"
    assert seen[0]["User-Agent"] == "firebreak/test (replica-a)"
    assert seen[0]["Accept"] == "application/json"


def test_a_handoff_serves_each_read_once_within_its_time_and_keeps_the_latest() -> None:
    now = [0.0]
    handoff = Handoff(ttl=2.0, limit=2, clock=lambda: now[0])
    handoff.put("Pod", NS, "a", {"v": 1})
    assert handoff.take("Pod", NS, "a") == {"v": 1}
    assert handoff.take("Pod", NS, "a") is None  # once
    handoff.put("Pod", NS, "a", {"v": 2})
    now[0] = 2.5
    assert handoff.take("Pod", NS, "a") is None  # too old
    handoff.put("Pod", NS, "a", {"v": 3})
    handoff.put("Pod", NS, "b", {"v": 4})
    handoff.put("Pod", NS, "c", {"v": 5})  # over the limit: the oldest goes
    assert len(handoff) == 2
    assert handoff.take("Pod", NS, "a") is None
    assert handoff.take("Pod", "other", "b") is None and handoff.take("Pod", NS, "b") == {"v": 4}


def test_alerts_about_one_pod_are_each_served_the_latest_read_once() -> None:
    now = [0.0]
    handoff = Handoff(ttl=2.0, clock=lambda: now[0])
    handoff.put("Pod", NS, "a", {"v": 1})
    now[0] = 1.0
    handoff.put("Pod", NS, "a", {"v": 2})  # a second alert: two reads to serve
    first = handoff.take("Pod", NS, "a")
    second = handoff.take("Pod", NS, "a")
    assert first == second == {"v": 2}
    assert first is not second  # each taker's own copy
    assert handoff.take("Pod", NS, "a") is None
    # A read that expired counts for nothing: only the new one is served.
    handoff.put("Pod", NS, "a", {"v": 3})
    now[0] = 3.5
    handoff.put("Pod", NS, "a", {"v": 4})
    assert handoff.take("Pod", NS, "a") == {"v": 4}
    assert handoff.take("Pod", NS, "a") is None
    # Served within the time of the latest read only.
    handoff.put("Pod", NS, "a", {"v": 5})
    handoff.put("Pod", NS, "a", {"v": 6})
    now[0] = 6.0
    assert handoff.take("Pod", NS, "a") is None
    assert len(handoff) == 0


def test_direct_lists_and_deletes(api: Recorder, kube: Kube) -> None:
    pods = path("v1", "pods", NS)
    kube.create(pods, POD)
    kube.create(pods, {**POD, "metadata": {"name": "q", "namespace": NS, "labels": {"a": "1"}}})
    assert sorted(p["metadata"]["name"] for p in kube.items(pods)) == ["p", "q"]
    assert [p["metadata"]["name"] for p in kube.items(pods, query={"labelSelector": "a=1"})] \
        == ["q"]
    assert kube.remove(path("v1", "pods", NS, "p")) is True
    assert kube.remove(path("v1", "pods", NS, "p")) is False  # gone already: success
    with pytest.raises(Conflict):  # a failed precondition is not "gone"
        kube.remove(path("v1", "pods", NS, "q"),
                    {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": "x"}})
    assert [p["metadata"]["name"] for p in kube.items(pods)] == ["q"]


def test_an_error_says_whether_it_came_after_a_retry(api: Recorder, kube: Kube) -> None:
    kube.create(path("v1", "pods", NS), POD)
    stale = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": "old"}}
    with pytest.raises(Conflict) as first:
        kube.remove(path("v1", "pods", NS, "p"), stale)
    assert first.value.retried is False
    # The first attempt's answer is lost (503): the precondition that fails next may be
    # that attempt's own doing.
    api.fail("delete", "pods", 503, "answer lost", times=1)
    with pytest.raises(Conflict) as after:
        kube.remove(path("v1", "pods", NS, "p"), stale, retry_for=5.0)
    assert after.value.retried is True


def test_a_handoff_keeps_no_managed_fields() -> None:
    handoff = Handoff()
    pod = {"metadata": {"name": "a", "uid": "u", "managedFields": [{"manager": "kubelet"}]},
           "spec": {}}
    handoff.put("Pod", NS, "a", pod)
    assert handoff.take("Pod", NS, "a") == {"metadata": {"name": "a", "uid": "u"}, "spec": {}}
    assert "managedFields" in pod["metadata"]  # the caller's object is left as it was


def _incident_sized() -> dict[str, Any]:
    """About a contained incident's size (3 KiB of JSON)."""
    return {"metadata": {"name": "miner", "namespace": NS, "resourceVersion": "7", "uid": "u"},
            "status": {"timeline": [{"reason": f"Step{i}", "message": "x" * 80}
                                    for i in range(24)]}}


def _traced_per_call(keep: Callable[[], Any], times: int = 200) -> float:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [keep() for _ in range(times)]
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == times
    return used / times


@pytest.mark.parametrize("keeper", ["stored", "handoff"])
def test_what_is_kept_encoded_takes_the_memory_of_its_length(keeper: str) -> None:
    """orjson's result keeps the headroom its buffer grew by (3 KiB of JSON in an
    8 KiB allocation); the incidents and pods the operator keeps take their own size."""
    body = _incident_sized()
    length = len(orjson.dumps(body))
    assert 2800 < length < 3500
    if keeper == "stored":
        per_call = _traced_per_call(lambda: Stored.of(body))
        assert Stored.of(body).body() == body
    else:
        handoff = Handoff(limit=1000)
        names = iter(range(10_000))
        per_call = _traced_per_call(lambda: handoff.put("Pod", NS, f"p{next(names)}", body))
        assert handoff.take("Pod", NS, "p0") == body
    # The bytes, their header, the tuple (and the handoff's entry) around them.
    assert per_call < length + 600, per_call


def test_a_contained_incident_is_kept_compressed() -> None:
    """The controller keeps every open incident's body: compressed, a contained
    incident (as the engine leaves it) takes, with the summary kept beside it, under
    60 % of the memory of its JSON alone (uncompressed: more than all of it), and
    comes back as it was."""
    from functools import partial

    from firebreak.actions import registry
    from firebreak.config import OperatorConfig
    from firebreak.engine import Engine
    from firebreak.events import post_event
    from tests.engine.world import Clock, add_app, add_incident, add_nodes, incident, playbook, step

    api = Recorder(clock=Clock())
    add_nodes(api, "node-a", "node-b")
    add_app(api)
    add_incident(api)
    kube = api.kube()
    Engine(kube=kube, config=OperatorConfig(namespace="firebreak-system"), actions=registry(),
           emit=partial(post_event, kube)).reconcile(
        NS, "miner", [playbook("isolate", step("isolate", "isolateNetwork"))])
    body = incident(api)
    assert body["status"]["phase"] == "Contained"
    length = len(orjson.dumps(body))
    per_call = _traced_per_call(lambda: Stored.of(body))
    assert Stored.of(body).body() == body
    assert per_call < 0.6 * length, (per_call, length)
