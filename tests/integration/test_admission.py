"""The second line of guardrails, on the real API server: what the operator's
ServiceAccount may and may not do, and approvals bound to the person who wrote them.

To show that each refusal comes from an admission policy and not from RBAC, the
ServiceAccount is given broad write access for the module (``firebreak-test-broad``):
the refusals below are the policies' alone, and each names its policy. The RBAC of
``manifests/rbac.yaml`` alone is checked in ``test_rbac.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests import admission
from tests.admission import install_rbac, service_account_kubeconfig
from tests.controlplane import LocalCluster
from tests.controlplane.pki import Authority
from tests.helpers import GROUP, OPERATOR_NS, VERSION, create_incident, deployment, wait_for

pytestmark = pytest.mark.cluster

BROAD = "firebreak-test-broad"
EXCLUDE = {"key": "quarantine.firebreak.dev/incident-1", "operator": "DoesNotExist"}


def _broad_rbac() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": BROAD},
         "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": BROAD},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": BROAD},
         "subjects": [{"kind": "ServiceAccount", "name": "firebreak",
                       "namespace": OPERATOR_NS}]},
    ]


@pytest.fixture(scope="module")
def policies(cluster: LocalCluster, crds: None) -> Iterator[None]:
    """The shipped RBAC and admission policies (approvals included), removed afterwards."""
    install_rbac(cluster)
    docs = admission.admission_documents(approvals=True)
    admission.apply(cluster, docs)
    yield
    admission.delete(cluster, [d for d in docs if d["kind"] != "ConfigMap"])


@pytest.fixture(scope="module")
def operator_api(policies: None, cluster: LocalCluster, core: client.CoreV1Api,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[client.ApiClient]:
    """An API client acting as the operator's ServiceAccount, with broad RBAC."""
    admission.apply(cluster, _broad_rbac())
    path = service_account_kubeconfig(cluster, core,
                                      tmp_path_factory.mktemp("sa") / "kubeconfig")
    api = config.new_client_from_config(config_file=str(path))
    probe = client.CoreV1Api(api)
    # Policies take effect shortly after they are created: wait for one refusal.
    wait_for(lambda: _refused(lambda: probe.patch_namespaced_service_account(
        "default", "kube-system", {"metadata": {"labels": {"probe": "x"}}}, dry_run="All")),
        timeout=30, what="the admission policies to take effect")
    yield api
    api.close()
    admission.delete(cluster, _broad_rbac())


def _refused(call: Callable[[], Any]) -> str | None:
    """The API server's refusal of ``call`` (403/422 message), or None if it succeeded."""
    try:
        call()
    except ApiException as exc:
        assert exc.status in (403, 422), exc
        return str(exc.body)
    return None


def refused_by(policy: str, call: Callable[[], Any]) -> str:
    message = _refused(call)
    assert message is not None, f"{policy} let the request through"
    assert f"ValidatingAdmissionPolicy '{policy}'" in message, message
    return message


# --- pods and workloads: labels only --------------------------------------------------


def test_pods_and_workloads_take_labels_but_never_a_new_image(
    operator_api: client.ApiClient, apps: client.AppsV1Api, core: client.CoreV1Api,
    namespace: str
) -> None:
    apps.create_namespaced_deployment(namespace, deployment("web", 2))
    pod = wait_for(lambda: core.list_namespaced_pod(namespace, label_selector="app=web").items,
                   what="a pod of web")[0]
    as_apps, as_core = client.AppsV1Api(operator_api), client.CoreV1Api(operator_api)

    as_core.patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": {
        "labels": {"quarantine.firebreak.dev/incident-1": "true"},
        "annotations": {"firebreak.dev/detached-from": "web-x"}}})
    as_apps.patch_namespaced_deployment("web", namespace,
                                        {"metadata": {"labels": {"flagged": "yes"}}})

    image = {"spec": {"containers": [{"name": "app", "image": "evil:latest"}]}}
    message = refused_by("firebreak-labels-only", lambda: as_core.patch_namespaced_pod(
        pod.metadata.name, namespace, image))
    assert "may change only the labels of Pod" in message
    template = {"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "evil:latest"}]}}}}
    refused_by("firebreak-labels-only",
               lambda: as_apps.patch_namespaced_deployment("web", namespace, template))
    refused_by("firebreak-labels-only", lambda: as_apps.patch_namespaced_deployment(
        "web", namespace, {"spec": {"replicas": 5}}))
    refused_by("firebreak-labels-only", lambda: as_apps.patch_namespaced_deployment(
        "web", namespace, {"metadata": {"annotations": {"example.com/owner": "me"}}}))
    refused_by("firebreak-labels-only", lambda: as_apps.patch_namespaced_deployment(
        "web", namespace, {"metadata": {"ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "gone", "uid": str(uuid.uuid4())}]}}))
    refused_by("firebreak-labels-only",
               lambda: as_apps.delete_namespaced_deployment("web", namespace))
    refused_by("firebreak-labels-only", lambda: as_apps.create_namespaced_deployment(
        namespace, deployment("mine", 1)))

    # Subresources other than scale are refused.
    refused_by("firebreak-scope", lambda: as_core.patch_namespaced_pod_status(
        pod.metadata.name, namespace, {"status": {"message": "x"}}))

    # Replicas go through the scale subresource.
    as_apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 0}})
    stored = apps.read_namespaced_deployment("web", namespace)
    assert stored.spec.replicas == 0
    assert stored.spec.template.spec.containers[0].image == "nginx:1.27"
    assert stored.metadata.labels["flagged"] == "yes"


# --- namespaces it never writes to ----------------------------------------------------


def test_nothing_is_written_in_kube_system_its_own_or_a_protected_namespace(
    operator_api: client.ApiClient, core: client.CoreV1Api, cluster: LocalCluster,
    namespace: str
) -> None:
    as_core = client.CoreV1Api(operator_api)
    as_net = client.NetworkingV1Api(operator_api)
    label = {"metadata": {"labels": {"quarantine.firebreak.dev/x": "true"}}}
    message = refused_by("firebreak-scope", lambda: as_core.patch_namespaced_service_account(
        "default", "kube-system", label, dry_run="All"))
    assert "namespace kube-system is protected" in message
    refused_by("firebreak-scope", lambda: as_net.create_namespaced_network_policy(
        "kube-system", _policy("firebreak-quarantine-x"), dry_run="All"))
    message = refused_by("firebreak-scope", lambda: as_net.create_namespaced_network_policy(
        OPERATOR_NS, _policy("firebreak-quarantine-x"), dry_run="All"))
    assert "never acts on its own namespace" in message
    # Its own namespace holds its evidence.
    as_core.create_namespaced_secret(OPERATOR_NS, client.V1Secret(
        metadata=client.V1ObjectMeta(name=f"evidence-{namespace}"), string_data={"a": "b"}),
        dry_run="All")

    # A namespace made protected through the policy's parameter (the same ConfigMap the
    # operator reads its list from).
    as_net.create_namespaced_network_policy(namespace, _policy("firebreak-quarantine-y"),
                                            dry_run="All")
    core.patch_namespaced_config_map("firebreak-protected-namespaces", OPERATOR_NS,
                                     {"data": {"namespaces": f"payments, {namespace}"}})
    try:
        message = wait_for(lambda: _refused(lambda: as_net.create_namespaced_network_policy(
            namespace, _policy("firebreak-quarantine-y"), dry_run="All")),
            what="the protected list to take effect")
        assert f"namespace {namespace} is protected" in message
    finally:
        core.patch_namespaced_config_map("firebreak-protected-namespaces", OPERATOR_NS,
                                         {"data": {"namespaces": ""}})


# --- nodes: a cordon and nothing else --------------------------------------------------


def test_nodes_may_be_cordoned_and_nothing_else(
    operator_api: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    name = f"adm-{namespace}"
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
    as_core = client.CoreV1Api(operator_api)
    try:
        as_core.patch_node(name, {"metadata": {"annotations": {"firebreak.dev/cordoned-by": "x"}},
                                  "spec": {"unschedulable": True}})
        assert core.read_node(name).spec.unschedulable is True
        refused_by("firebreak-cordon-only", lambda: as_core.patch_node(name, {"spec": {
            "taints": [{"key": "evil", "effect": "NoSchedule"}]}}))
        refused_by("firebreak-cordon-only", lambda: as_core.patch_node(
            name, {"metadata": {"labels": {"secure-workloads": "true"}}}))
        refused_by("firebreak-cordon-only", lambda: as_core.delete_node(name))
        as_core.patch_node(name, {"metadata": {"annotations": {"firebreak.dev/cordoned-by": None}},
                                  "spec": {"unschedulable": None}})
        assert not core.read_node(name).spec.unschedulable
    finally:
        core.delete_node(name)


# --- NetworkPolicies: its own, plus the exclusion term in others -------------------------


def _policy(name: str, expressions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    selector: dict[str, Any] = {"matchLabels": {"app": "web"}}
    if expressions is not None:
        selector["matchExpressions"] = expressions
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name},
            "spec": {"podSelector": selector, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {}}]}]}}


def test_own_networkpolicies_and_only_the_exclusion_term_in_others(
    operator_api: client.ApiClient, api_client: client.ApiClient, namespace: str
) -> None:
    net, as_net = client.NetworkingV1Api(api_client), client.NetworkingV1Api(operator_api)
    as_net.create_namespaced_network_policy(namespace, _policy("firebreak-quarantine-incident-1"))
    as_net.patch_namespaced_network_policy("firebreak-quarantine-incident-1", namespace,
                                           {"spec": {"ingress": []}})
    refused_by("firebreak-networkpolicies", lambda: as_net.create_namespaced_network_policy(
        namespace, _policy("allow-all")))
    net.create_namespaced_network_policy(namespace, _policy("team", [
        {"key": "tier", "operator": "In", "values": ["front"]}]))

    def terms() -> list[dict[str, Any]]:
        stored = net.read_namespaced_network_policy("team", namespace)
        return [{"key": e.key, "operator": e.operator, **({"values": e.values} if e.values else {})}
                for e in stored.spec.pod_selector.match_expressions or []]

    def set_terms(expressions: list[dict[str, Any]]) -> Any:
        # A JSON merge patch replaces the list as a whole, as the quarantine writes it.
        return as_net.patch_namespaced_network_policy(
            "team", namespace, {"spec": {"podSelector": {"matchExpressions": expressions}}},
            _content_type="application/merge-patch+json")

    original = terms()
    set_terms([*original, EXCLUDE])  # the quarantine excludes its pods
    assert terms() == [*original, EXCLUDE]
    set_terms(original)  # and lets them back in on revert
    assert terms() == original

    message = refused_by("firebreak-networkpolicies", lambda: set_terms(
        [*original, {"key": "quarantine.firebreak.dev/incident-1", "operator": "Exists"}]))
    assert "DoesNotExist" in message
    refused_by("firebreak-networkpolicies", lambda: set_terms(
        [*original, {"key": "tier", "operator": "DoesNotExist"}]))
    refused_by("firebreak-networkpolicies", lambda: set_terms([EXCLUDE]))  # drops tier In
    message = refused_by("firebreak-networkpolicies", lambda: as_net.patch_namespaced_network_policy(
        "team", namespace, {"spec": {"ingress": [{}]}}))
    assert "only spec.podSelector.matchExpressions may change" in message
    refused_by("firebreak-networkpolicies", lambda: as_net.patch_namespaced_network_policy(
        "team", namespace, {"metadata": {"labels": {"owner": "firebreak"}}}))
    refused_by("firebreak-networkpolicies",
               lambda: as_net.delete_namespaced_network_policy("team", namespace))
    as_net.delete_namespaced_network_policy("firebreak-quarantine-incident-1", namespace)
    assert terms() == original


# --- approvals bound to a person ----------------------------------------------------------


@pytest.fixture(scope="module")
def people(policies: None, cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, client.CustomObjectsApi]]:
    """alice and bob, with client certificates of the cluster's CA, both approvers."""
    authority = Authority(cluster.pki)
    folder = tmp_path_factory.mktemp("people")
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "firebreak-test-approvers"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "firebreak-approver"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                             "name": n} for n in ("alice", "bob")]}
    admission.apply(cluster, [binding])
    clients = {}
    for person in ("alice", "bob"):
        path = authority.kubeconfig(folder / f"{person}.kubeconfig", cluster.server, person,
                                    person)
        clients[person] = client.CustomObjectsApi(config.new_client_from_config(
            config_file=str(path)))
    yield clients
    admission.delete(cluster, [binding])


def _decide(api: client.CustomObjectsApi, namespace: str, name: str,
            spec: dict[str, Any]) -> Any:
    return api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "securityincidents",
                                              name, {"spec": spec})


def test_approvals_and_resolutions_carry_the_writers_name(
    people: dict[str, client.CustomObjectsApi], custom: client.CustomObjectsApi,
    operator_api: client.ApiClient, namespace: str
) -> None:
    alice, bob = people["alice"], people["bob"]
    create_incident(custom, namespace, "miner", {"kind": "Pod", "namespace": namespace,
                                                 "name": "web-1"})
    wait_for(lambda: not _refused(lambda: alice.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "securityincidents", "miner")), what="alice's access")

    message = refused_by("firebreak-approvals", lambda: _decide(
        alice, namespace, "miner", {"approval": {"decision": "approve", "by": "bob"}}))
    assert "spec.approval.by must name you (alice)" in message
    refused_by("firebreak-approvals", lambda: _decide(
        alice, namespace, "miner", {"approval": {"decision": "approve"}}))
    _decide(alice, namespace, "miner", {"approval": {"decision": "approve", "by": "alice"}})
    # Someone else editing the incident leaves alice's decision as it is.
    _decide(bob, namespace, "miner", {"description": "seen by bob"})
    refused_by("firebreak-approvals", lambda: _decide(
        bob, namespace, "miner", {"approval": {"decision": "reject", "by": "alice"}}))

    refused_by("firebreak-approvals", lambda: _decide(
        bob, namespace, "miner", {"resolution": {"reason": "done", "by": "alice"}}))
    _decide(bob, namespace, "miner", {"resolution": {"reason": "done", "by": "bob"}})
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                 "securityincidents", "miner")["spec"]
    assert stored["approval"]["by"] == "alice" and stored["resolution"]["by"] == "bob"
    # Approvers decide; they do not delete the record.
    message = _refused(lambda: alice.delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "securityincidents", "miner"))
    assert message is not None and "forbidden" in message

    # The operator resolves in the name of the alert source whose signal resolved, and
    # approves nothing.
    as_operator = client.CustomObjectsApi(operator_api)
    create_incident(custom, namespace, "flood", {"kind": "Pod", "namespace": namespace,
                                                 "name": "web-2"})
    refused_by("firebreak-approvals", lambda: _decide(
        as_operator, namespace, "flood", {"approval": {"decision": "approve",
                                                       "by": "alertmanager"}}))
    _decide(as_operator, namespace, "flood",
            {"resolution": {"reason": "the signal resolved", "by": "alertmanager"}})


def test_the_shipped_policies_are_those_tested() -> None:
    names = {d["metadata"]["name"] for d in admission.admission_documents(approvals=True)
             if d["kind"] == "ValidatingAdmissionPolicy"}
    assert names == {"firebreak-scope", "firebreak-labels-only", "firebreak-cordon-only",
                     "firebreak-networkpolicies", "firebreak-approvals"}
    kustomization = yaml.safe_load(
        (Path(admission.ADMISSION).parent / "kustomization.yaml").read_text())
    assert "admission.yaml" in kustomization["resources"]
