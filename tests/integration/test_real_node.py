"""The real node: pods are processes that send packets, and the kubelet serves their
logs and exec through the API server (by IP, with client certificates)."""

from __future__ import annotations

import ipaddress
import ssl
import subprocess
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
from tests.controlplane.realnode import SERVICE_CIDR
from tests.helpers import HTTP_PORT, client_pod, fetch, start_pods, wait_for, web_pod

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


def test_services_answer_this_host_and_pods_reach_the_api_server_without_leaving_the_bridge(
    real_node: RealNode, cluster: LocalCluster, core: client.CoreV1Api, namespace: str
) -> None:
    start_pods(core, namespace, web_pod("web"), client_pod("client"))
    service = core.create_namespaced_service(namespace, client.V1Service(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1ServiceSpec(selector={"app": "web"}, ports=[client.V1ServicePort(
            port=80, target_port=HTTP_PORT)])))
    address = service.spec.cluster_ip

    # From this host (as Alertmanager posts to the operator's Service): kube-proxy
    # translates the Service address to the pod's.
    def page() -> str | None:
        try:
            with urllib.request.urlopen(f"http://{address}/", timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return None

    assert wait_for(page, timeout=30, what="the Service to answer") == "hello from web\n"

    # A pod reaches the API server as pods do: the `kubernetes` Service, whose endpoint is
    # the node's bridge address; its only routes are the bridge and the Service range.
    api = core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    endpoints = core.read_namespaced_endpoints("kubernetes", "default").subsets[0]
    assert [a.ip for a in endpoints.addresses] == [real_node.ip]
    connected = cluster.kubectl("exec", "-n", namespace, "client", "--", "sh", "-c",
                                f"nc -w 2 {api} 443 </dev/null && echo connected")
    assert connected.strip() == "connected"
    routes = {line.split()[0]: line for line in
              cluster.kubectl("exec", "-n", namespace, "client", "--", "ip", "route").splitlines()}
    assert set(routes) == {SERVICE_CIDR, real_node.subnet}
    assert f"via {real_node.ip}" in routes[SERVICE_CIDR]

    # An address of the Service range that no Service holds goes onto the bridge, where
    # nothing answers it: never to this host's default route.
    unused = str(ipaddress.ip_network(SERVICE_CIDR)[-2])
    route = subprocess.run(["ip", "route", "get", unused], capture_output=True, text=True).stdout
    assert f"dev {real_node.bridge}" in route, route
