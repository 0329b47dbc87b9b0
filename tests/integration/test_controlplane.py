"""The local control plane is a real one: controllers, scheduling, RBAC, subresources.

Each test asserts state the upstream components produced, so a stand-in that only
stored objects would fail them.
"""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.controlplane import LocalCluster
from tests.controlplane.cluster import KWOK_NODE_LABEL
from tests.helpers import deployment, running_pods, wait_for

pytestmark = pytest.mark.cluster


def test_deployment_gets_a_replicaset_and_running_pods_on_fake_nodes(
    core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str
) -> None:
    apps.create_namespaced_deployment(namespace, deployment("web", 3))

    pods = wait_for(lambda: (p := running_pods(core, namespace, "web")) and len(p) == 3 and p,
                    timeout=60, what="3 running pods")

    replicasets = apps.list_namespaced_replica_set(namespace, label_selector="app=web").items
    assert len(replicasets) == 1
    assert replicasets[0].metadata.owner_references[0].kind == "Deployment"
    fake_nodes = {n.metadata.name for n in
                  core.list_node(label_selector=KWOK_NODE_LABEL).items}
    for pod in pods:
        assert pod.metadata.owner_references[0].name == replicasets[0].metadata.name
        assert pod.spec.node_name in fake_nodes
        assert pod.status.pod_ip
        assert all(c.ready for c in pod.status.container_statuses)


def test_network_policy_round_trips(namespace: str, api_client: client.ApiClient) -> None:
    networking = client.NetworkingV1Api(api_client)
    policy = client.V1NetworkPolicy(
        metadata=client.V1ObjectMeta(name="deny-all"),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels={"quarantine": "yes"}),
            policy_types=["Ingress", "Egress"],
        ),
    )
    networking.create_namespaced_network_policy(namespace, policy)

    stored = networking.read_namespaced_network_policy("deny-all", namespace)
    assert stored.spec.pod_selector.match_labels == {"quarantine": "yes"}
    assert stored.spec.policy_types == ["Ingress", "Egress"]
    assert stored.spec.ingress is None and stored.spec.egress is None


def test_cordoned_node_gets_no_new_pods(
    core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str, cluster: LocalCluster
) -> None:
    (name,) = cluster.add_nodes(1, prefix=f"cordon-{namespace}")
    wait_for(lambda: any(c.type == "Ready" and c.status == "True"
                         for c in core.read_node(name).status.conditions or []),
             what=f"node {name} ready")
    try:
        core.patch_node(name, {"spec": {"unschedulable": True}})
        assert core.read_node(name).spec.unschedulable is True

        apps.create_namespaced_deployment(
            namespace, deployment("pinned", 1, node_selector={"kubernetes.io/hostname": name}))
        pending = wait_for(
            lambda: [p for p in core.list_namespaced_pod(namespace).items
                     if any(c.reason == "Unschedulable" for c in p.status.conditions or [])],
            what="the scheduler to refuse the cordoned node")
        assert pending[0].spec.node_name is None

        core.patch_node(name, {"spec": {"unschedulable": False}})
        running = wait_for(lambda: running_pods(core, namespace, "pinned"),
                           timeout=60, what="the pod to run once uncordoned")
        assert running[0].spec.node_name == name
    finally:
        core.delete_node(name)


def test_scale_subresource_changes_the_number_of_pods(
    core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str
) -> None:
    apps.create_namespaced_deployment(namespace, deployment("api", 2))
    wait_for(lambda: len(running_pods(core, namespace, "api")) == 2, timeout=60,
             what="2 running pods")

    apps.patch_namespaced_deployment_scale("api", namespace, {"spec": {"replicas": 0}})

    # A scale of 0 is omitted from the JSON (omitempty), hence `or 0`.
    assert (apps.read_namespaced_deployment_scale("api", namespace).spec.replicas or 0) == 0
    wait_for(lambda: not core.list_namespaced_pod(namespace, label_selector="app=api").items,
             timeout=60, what="the pods to be removed")


def test_service_account_without_permissions_is_forbidden(
    core: client.CoreV1Api, namespace: str, cluster: LocalCluster
) -> None:
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody")))
    token = core.create_namespaced_service_account_token(
        "nobody", namespace,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
    ).status.token

    configuration = client.Configuration()
    configuration.host = cluster.server
    configuration.ssl_ca_cert = str(cluster.pki / "ca.crt")
    configuration.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(configuration) as as_nobody:
        # Authenticated (not 401), but RBAC grants nothing.
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(as_nobody).list_namespaced_pod(namespace)
        assert denied.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in denied.value.body


def test_namespace_deletion_completes(core: client.CoreV1Api) -> None:
    name = "t-deleted-namespace"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(
        name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="data"), data={"k": "v"}))

    core.delete_namespace(name)

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, timeout=60, what=f"namespace {name} to be deleted")
