"""The real node: pods are processes that send packets, and the kubelet serves their
logs and exec through the API server (by IP, with client certificates)."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from firebreak.actions.base import ActionContext
from firebreak.actions.snapshot import Snapshot
from firebreak.config import OperatorConfig
from tests.controlplane import LocalCluster, RealNode
from tests.helpers import client_pod, fetch, start_pods, wait_for, web_pod

pytestmark = pytest.mark.cluster


def test_pods_talk_over_their_ips_and_serve_logs_and_exec(
    real_node: RealNode, cluster: LocalCluster, core: client.CoreV1Api, namespace: str
) -> None:
    ips = start_pods(core, namespace, web_pod("web"), client_pod("client"))

    assert all(ip.startswith(real_node.subnet.rsplit(".", 1)[0] + ".") for ip in ips.values())
    assert fetch(cluster.kubectl, namespace, "client", ips["web"]) == "hello from web\n"
    # A port nothing listens on is refused: the request above was really answered.
    assert fetch(cluster.kubectl, namespace, "client", ips["web"], port=8081) is None

    interfaces = cluster.kubectl("exec", "-n", namespace, "client", "--", "ip", "-o", "-4", "addr")
    assert f"inet {ips['client']}/24" in interfaces
    routes = cluster.kubectl("exec", "-n", namespace, "client", "--", "ip", "route")
    assert "default" not in routes, "pods must have no route off the node's bridge"
    assert wait_for(lambda: "web web starting" in cluster.kubectl("logs", "-n", namespace, "web"),
                    what="the web pod's log")


def test_the_kubelet_refuses_anonymous_requests(real_node: RealNode) -> None:
    context = ssl.create_default_context(cafile=str(real_node.authority.certificate))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"https://{real_node.ip}:10250/pods", context=context, timeout=5)
    assert refused.value.code == 401


def test_snapshot_stores_the_real_container_logs(
    real_node: RealNode, cluster: LocalCluster, core: client.CoreV1Api, namespace: str,
    make_context: Callable[..., ActionContext],
) -> None:
    ips = start_pods(core, namespace, web_pod("web"), client_pod("client"))
    assert fetch(cluster.kubectl, namespace, "client", ips["web"])
    # Evidence goes to the operator's namespace: here, the test's own.
    action = Snapshot()
    ctx = make_context("Pod", "web", step="evidence", config=OperatorConfig(namespace=namespace))
    params = action.parse({"storage": "configMap"})

    applied = action.apply(ctx, params, action.prepare(ctx, params).record)

    (bundle,) = core.list_namespaced_config_map(
        namespace, label_selector="firebreak.dev/evidence=true").items
    (log_key,) = [k for k in bundle.data if k.startswith("logs_") and k.endswith(".log")]
    log = bundle.data[log_key]
    assert "web web starting" in log
    # httpd -v logs each request with the client's address: the request made above.
    assert ips["client"] in log
    assert ", 1 log in ConfigMap " in applied.message


def test_pods_that_may_run_on_the_real_node_must_use_local_images(
    real_node: RealNode, core: client.CoreV1Api, namespace: str
) -> None:
    pod = client_pod("puller")
    pod.spec.containers[0].image = "nginx:1.27"
    pod.spec.containers[0].image_pull_policy = "IfNotPresent"

    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, pod)

    assert refused.value.status == 422
    assert "use local images (localhost/...) with imagePullPolicy Never" in refused.value.body
    assert not core.list_namespaced_pod(namespace).items
