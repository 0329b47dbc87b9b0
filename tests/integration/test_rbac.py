"""The operator's RBAC (``manifests/rbac.yaml``) alone, by access reviews on the real API
server: Secrets only in its own namespace, and none of the verbs the code never uses.
That the grants suffice is shown by the end-to-end tests, which run the operator
under them."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.admission import USERNAME, install_rbac
from tests.controlplane import LocalCluster
from tests.helpers import GROUP, OPERATOR_NS

pytestmark = pytest.mark.cluster


def _can(authz: client.AuthorizationV1Api, verb: str, resource: str, namespace: str | None,
         group: str = "", subresource: str | None = None) -> bool:
    review = authz.create_subject_access_review(client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=USERNAME, groups=["system:serviceaccounts", f"system:serviceaccounts:{OPERATOR_NS}",
                                   "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                verb=verb, resource=resource, namespace=namespace, group=group,
                subresource=subresource))))
    return bool(review.status.allowed)


def test_rbac_grants_secrets_only_in_its_own_namespace_and_no_unused_verb(
    cluster: LocalCluster, api_client: client.ApiClient
) -> None:
    install_rbac(cluster)
    authz = client.AuthorizationV1Api(api_client)
    for verb in ("get", "list", "delete", "create", "watch"):
        assert not _can(authz, verb, "secrets", "kube-system"), verb
        assert not _can(authz, verb, "secrets", None), verb
    for verb in ("get", "list", "delete", "create"):
        assert _can(authz, verb, "secrets", OPERATOR_NS), verb
    assert not _can(authz, "watch", "secrets", OPERATOR_NS)
    assert _can(authz, "patch", "pods", "shop")
    assert _can(authz, "patch", "deployments", "shop", group="apps", subresource="scale")
    for verb, resource, group in [("watch", "pods", ""), ("list", "deployments", "apps"),
                                  ("list", "jobs", "batch"), ("update", "deployments", "apps"),
                                  ("get", "persistentvolumeclaims", ""),
                                  ("get", "volumesnapshots", "snapshot.storage.k8s.io"),
                                  ("patch", "events", ""), ("update", "securityincidents", GROUP),
                                  ("patch", "responseplaybooks", GROUP),
                                  ("create", "pods", ""), ("delete", "nodes", "")]:
        assert not _can(authz, verb, resource, "shop", group=group), (verb, resource)
    assert not _can(authz, "update", "securityincidents", "shop", group=GROUP,
                    subresource="status")
