"""The label action against a real API server: set, re-apply, revert, and leave alone
what someone else changed in the meantime."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from kubernetes import client
from pydantic import ValidationError

from firebreak.actions.base import ActionContext, ActionRefused
from firebreak.actions.label import Label, _patch
from firebreak.kube import ApiError
from tests.helpers import deployment, wait_for

pytestmark = pytest.mark.cluster

QUARANTINE = "security.firebreak.dev/flagged"


def _settled_version(read: Callable[[], client.V1ObjectMeta]) -> str:
    """The resourceVersion once controllers stopped writing the object (status updates
    would otherwise pass for writes of ours)."""
    def stable() -> str | None:
        before = read().resource_version
        time.sleep(0.5)
        return before if read().resource_version == before else None

    return wait_for(stable, timeout=30, what="the object to settle")


def test_labels_a_deployment_and_restores_previous_values(
    make_context: Callable[..., ActionContext], apps: client.AppsV1Api, namespace: str
) -> None:
    def meta() -> client.V1ObjectMeta:
        return apps.read_namespaced_deployment("web", namespace).metadata

    apps.create_namespaced_deployment(namespace, deployment("web", 0))
    apps.patch_namespaced_deployment("web", namespace, {"metadata": {"labels": {"team": "a"}}})
    action, ctx = Label(), make_context("Deployment", "web")
    params = action.parse({"labels": {QUARANTINE: "true", "team": "incident"}})

    prepared = action.prepare(ctx, params)
    assert prepared.record.previous == {QUARANTINE: None, "team": "a"}
    assert [(o.kind, o.namespace, o.name) for o in prepared.objects] == \
        [("Deployment", namespace, "web")]
    # prepare writes nothing
    assert meta().labels == {"app": "web", "team": "a"}

    applied = action.apply(ctx, params, prepared.record)
    assert meta().labels == {"app": "web", "team": "incident", QUARANTINE: "true"}
    assert applied.record is not None
    assert applied.message == f"labelled Deployment {namespace}/web with {QUARANTINE}=true, team=incident"

    version = _settled_version(meta)
    again = action.apply(ctx, params, applied.record)
    assert again.message == applied.message
    assert meta().resource_version == version

    message = action.revert(ctx, applied.record)
    assert message == f"Deployment {namespace}/web: restored team=a; removed {QUARANTINE}"
    assert meta().labels == {"app": "web", "team": "a"}

    version = _settled_version(meta)
    assert action.revert(ctx, applied.record) == \
        f"Deployment {namespace}/web: labels already as before"
    assert meta().resource_version == version


def test_revert_leaves_a_label_someone_else_changed(
    make_context: Callable[..., ActionContext], make_app: Callable[..., list[client.V1Pod]],
    core: client.CoreV1Api, namespace: str
) -> None:
    (pod,) = make_app("web", 1)
    name = pod.metadata.name
    action, ctx = Label(), make_context("Pod", name)
    params = action.parse({"labels": {QUARANTINE: "true", "incident": "i-1"}})
    prepared = action.prepare(ctx, params)
    assert prepared.warnings == []
    applied = action.apply(ctx, params, prepared.record)
    assert applied.record is not None
    core.patch_namespaced_pod(name, namespace, {"metadata": {"labels": {QUARANTINE: "cleared"}}})

    message = action.revert(ctx, applied.record)

    labels = core.read_namespaced_pod(name, namespace).metadata.labels
    assert labels.get(QUARANTINE) == "cleared"
    assert "incident" not in labels
    assert message == (f"Pod {namespace}/{name}: removed incident; left {QUARANTINE} "
                       f"(now 'cleared', not 'true' as set): changed by someone else since")


def test_relabelling_a_pod_out_of_its_selector_is_warned_about(
    make_context: Callable[..., ActionContext], make_app: Callable[..., list[client.V1Pod]]
) -> None:
    (pod,) = make_app("web", 1)
    action, ctx = Label(), make_context("Pod", pod.metadata.name)

    prepared = action.prepare(ctx, action.parse({"labels": {"app": "quarantined"}}))

    (warning,) = prepared.warnings
    assert warning.startswith("ReplicaSet web-") and "selects its pods by app" in warning


def test_a_node_is_not_labelled(
    make_context: Callable[..., ActionContext], core: client.CoreV1Api, namespace: str
) -> None:
    """A node's labels steer the scheduler: the action refuses, as the admission policy
    would, before reading or writing anything."""
    name = f"label-{namespace}"
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
    try:
        action, ctx = Label(), make_context("Node", name)
        with pytest.raises(ActionRefused, match="label does not act on Nodes"):
            action.prepare(ctx, action.parse({"labels": {QUARANTINE: "true"}}))
        assert QUARANTINE not in (core.read_node(name).metadata.labels or {})
    finally:
        core.delete_node(name)


def test_an_object_replaced_after_prepare_is_not_labelled(
    make_context: Callable[..., ActionContext], core: client.CoreV1Api, namespace: str
) -> None:
    def bare_pod() -> client.V1Pod:
        # Never scheduled: no node agent (a kubelet, kwok) acts on it, so nothing but this
        # test deletes either pod of the name, whenever that agent gets to the first one.
        return client.V1Pod(
            metadata=client.V1ObjectMeta(name="bare"),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")],
                                  node_selector={"firebreak.dev/no-such-node": "true"}))

    core.create_namespaced_pod(namespace, bare_pod())
    action, ctx = Label(), make_context("Pod", "bare")
    params = action.parse({"labels": {QUARANTINE: "true"}})
    prepared = action.prepare(ctx, params)
    core.delete_namespaced_pod("bare", namespace, grace_period_seconds=0)
    wait_for(lambda: not core.list_namespaced_pod(namespace).items, timeout=60,
             what="the pod to be deleted")
    core.create_namespaced_pod(namespace, bare_pod())

    with pytest.raises(ActionRefused, match=f"Pod {namespace}/bare was replaced by another "
                                            f"object of the same name since the step was"):
        action.apply(ctx, params, prepared.record)
    # Should the replacement come between the read and the patch, the API server itself
    # refuses: the uid in the patch is immutable.
    with pytest.raises(ApiError) as refused:
        _patch(ctx.kube, prepared.record, {"labels": {QUARANTINE: "true"}})
    assert refused.value.status == 422 and "metadata.uid" in str(refused.value)
    assert QUARANTINE not in (core.read_namespaced_pod("bare", namespace).metadata.labels or {})
    assert action.revert(ctx, prepared.record) == (
        f"Pod {namespace}/bare was replaced by another object of the same name; "
        f"nothing to revert")


def test_missing_target_is_refused(make_context: Callable[..., ActionContext],
                                   namespace: str) -> None:
    action = Label()
    with pytest.raises(ActionRefused, match=f"Deployment nothing in namespace {namespace} "
                                            f"does not exist"):
        action.prepare(make_context("Deployment", "nothing"),
                       action.parse({"labels": {"a": "b"}}))


@pytest.mark.parametrize(("labels", "problem"), [
    ({}, "at least 1 item"),
    ({"bad key": "x"}, "key 'bad key': the name part must be at most 63 characters"),
    ({"Example.com/x": "y"}, "key 'Example.com/x': the prefix must be a DNS subdomain"),
    ({"/x": "y"}, "key '/x': the prefix before '/' must not be empty"),
    ({"x": "-y"}, "value '-y' of 'x': a value must be empty or at most 63 characters"),
    ({"x": "v" * 64}, "a value must be empty or at most 63 characters"),
    ({"k" * 64: "v"}, "the name part must be at most 63 characters"),
])
def test_invalid_labels_are_explained(labels: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError) as invalid:
        Label().parse({"labels": labels})
    assert problem in str(invalid.value)


def test_valid_labels_are_accepted() -> None:
    params = Label().parse({"labels": {"example.com/a-b_c.d": "", "x": "Y.1_z-2"}})
    assert params.labels == {"example.com/a-b_c.d": "", "x": "Y.1_z-2"}
