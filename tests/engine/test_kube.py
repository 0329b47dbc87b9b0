"""The error taxonomy, by class, from the API server's real answers (through the
generated client and the recording API): callers catch ``NotFound``, ``Conflict``
and the rest, never compare status codes."""

from __future__ import annotations

import pytest
from kubernetes import client

from firebreak.kube import (
    AlreadyExists,
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    Kube,
    NotFound,
    PermanentApiError,
    TemporaryApiError,
    call,
    create,
    delete,
    raw,
    read,
    read_raw,
)
from tests.engine.recorder import Recorder

NS = "shop"
POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": NS},
       "spec": {"containers": [{"name": "c", "image": "nginx"}]}}


@pytest.mark.parametrize(("status", "error"), [
    (400, BadRequest), (403, Forbidden), (404, NotFound), (409, Conflict), (410, Gone),
    (422, Invalid), (401, PermanentApiError),
])
def test_permanent_errors_are_told_apart_by_class(api: Recorder, kube: Kube, status: int,
                                                  error: type[ApiError]) -> None:
    api.fail("get", "pods", status, "told so")
    with pytest.raises(error) as raised:
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
    assert create(kube.core.create_namespaced_pod, NS, POD) is not None
    with pytest.raises(AlreadyExists):
        call(kube.core.create_namespaced_pod, NS, POD)
    assert create(kube.core.create_namespaced_pod, NS, POD) is None
    assert api.written() == [f"create pods {NS}/p"]


def test_a_failed_precondition_is_a_conflict_not_already_exists(api: Recorder,
                                                                 kube: Kube) -> None:
    call(kube.core.create_namespaced_pod, NS, POD)
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="another"))
    with pytest.raises(Conflict) as raised:
        delete(kube.core.delete_namespaced_pod, "p", NS, body=options)
    assert not isinstance(raised.value, AlreadyExists)
    assert api.get("pods", NS, "p") is not None


def test_absent_objects_read_as_none_and_delete_as_not_existing(api: Recorder,
                                                                kube: Kube) -> None:
    assert read(kube.core.read_namespaced_pod, "p", NS) is None
    assert read_raw(kube.core.read_namespaced_pod, "p", NS) is None
    assert delete(kube.core.delete_namespaced_pod, "p", NS) is False
    call(kube.core.create_namespaced_pod, NS, POD)
    assert raw(kube.core.read_namespaced_pod, "p", NS)["metadata"]["name"] == "p"
    assert delete(kube.core.delete_namespaced_pod, "p", NS) is True
    # Only 404 means absent: any other refusal is raised.
    api.fail("get", "pods", 403, "forbidden")
    with pytest.raises(Forbidden):
        read_raw(kube.core.read_namespaced_pod, "p", NS)
