"""The view of NetworkPolicies the watch delivers: what it keeps of each, which
version wins, and that it answers only once the first listing is complete."""

from __future__ import annotations

from typing import Any

import pytest

from firebreak import views
from firebreak.isolation import PolicySet
from firebreak.views import PolicyView, trimmed


def policy(name: str, version: str, namespace: str = "shop", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": version,
                         "uid": f"uid-{name}", "creationTimestamp": "2025-03-01T12:00:00Z",
                         "labels": {"team": "shop"},
                         "annotations": {"firebreak.dev/incident-uid": "u-1",
                                         "kubectl.kubernetes.io/last-applied-configuration":
                                             "{...}"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"podSelector": {}, **spec}}


@pytest.fixture
def view() -> PolicyView:
    found = PolicyView()
    found.mark_synced()
    return found


def test_a_policy_is_kept_with_what_the_quarantine_reads_and_nothing_else() -> None:
    assert trimmed(policy("allow", "7", ingress=[{}])) == {
        "metadata": {"name": "allow", "namespace": "shop", "resourceVersion": "7",
                     "labels": {"team": "shop"},
                     "annotations": {"firebreak.dev/incident-uid": "u-1"}},
        "spec": {"podSelector": {}, "ingress": [{}]}}


def test_equal_rules_of_many_policies_are_held_once() -> None:
    rules = [{"to": [{"podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
              "ports": [{"protocol": "UDP", "port": 53}]}]
    first = trimmed(policy("q-1", "7", podSelector={"matchLabels": {"q/1": "true"}},
                           policyTypes=["Ingress", "Egress"], egress=rules))
    second = trimmed(policy("q-2", "8", podSelector={"matchLabels": {"q/1": "true"}},
                            policyTypes=["Ingress", "Egress"], egress=[dict(r) for r in rules]))
    other = trimmed(policy("q-3", "9", policyTypes=["Egress"], egress=[]))
    assert second["spec"] == first["spec"]
    assert second["spec"]["egress"] is first["spec"]["egress"]
    assert second["spec"]["policyTypes"] is first["spec"]["policyTypes"]
    # Each policy's own selector stays its own; different rules are not shared.
    assert second["spec"]["podSelector"] is not first["spec"]["podSelector"]
    assert other["spec"]["egress"] == [] and other["spec"]["policyTypes"] == ["Egress"]


def test_parts_are_shared_whatever_the_order_of_their_keys() -> None:
    first = trimmed(policy("q-1", "7", egress=[{"to": [{}], "ports": [{"port": 53}]}]))
    second = trimmed(policy("q-2", "8", egress=[{"ports": [{"port": 53}], "to": [{}]}]))
    assert second["spec"]["egress"] is first["spec"]["egress"]


def test_the_shared_parts_are_bounded() -> None:
    for n in range(views.SHARED_LIMIT + 10):
        trimmed(policy(f"p-{n}", "1", egress=[{"ports": [{"port": n}]}]))
        assert len(views._shared_parts) <= views.SHARED_LIMIT
    kept = trimmed(policy("p-x", "1", egress=[{"ports": [{"port": 1}]}]))
    assert kept["spec"]["egress"] == [{"ports": [{"port": 1}]}]


def test_nothing_is_answered_before_the_first_listing_is_complete() -> None:
    fresh = PolicyView()
    fresh.upsert(policy("allow", "7"))
    assert fresh.in_namespace("shop") is None
    fresh.mark_synced()
    assert [p["metadata"]["name"] for p in fresh.in_namespace("shop") or []] == ["allow"]


def test_the_newest_version_wins_whatever_the_order_of_delivery(view: PolicyView) -> None:
    view.upsert(policy("allow", "9", ingress=[{}]))
    view.upsert(policy("allow", "8"))  # older: a late delivery of the index
    (held,) = view.in_namespace("shop") or []
    assert held["metadata"]["resourceVersion"] == "9" and held["spec"]["ingress"] == [{}]
    view.upsert(policy("allow", "10"))
    assert [p["metadata"]["resourceVersion"] for p in view.in_namespace("shop") or []] == ["10"]
    view.upsert(policy("allow", "not-a-number"))  # not comparable: the latest delivered
    assert [p["metadata"]["resourceVersion"] for p in view.in_namespace("shop") or []] == [
        "not-a-number"]


def test_namespaces_are_apart_and_a_removed_policy_is_gone(view: PolicyView) -> None:
    view.upsert(policy("a", "1"))
    view.upsert(policy("b", "2"))
    view.upsert(policy("a", "3", namespace="other"))
    assert len(view) == 3
    assert sorted(p["metadata"]["name"] for p in view.in_namespace("shop") or []) == ["a", "b"]
    assert view.get("other", "a") is not None and view.get("other", "b") is None
    assert view.get("nowhere", "a") is None
    view.remove("shop", "a")
    view.remove("shop", "never-there")
    view.remove("nowhere", "a")
    assert [p["metadata"]["name"] for p in view.in_namespace("shop") or []] == ["b"]
    view.remove("shop", "b")
    emptied = view.in_namespace("shop")
    assert emptied is not None and len(emptied) == 0
    assert len(view) == 1


def test_an_answer_is_the_callers_own_and_finds_quarantines_by_their_label(
        view: PolicyView) -> None:
    label = "quarantine.firebreak.dev/shop.web"
    view.upsert(policy("allow", "1"))
    view.upsert({"metadata": {"name": "firebreak-quarantine-web", "namespace": "shop",
                              "resourceVersion": "2"},
                 "spec": {"podSelector": {"matchLabels": {label: "true"}}}})
    answer = view.in_namespace("shop")
    assert answer is not None and answer.by_label() == {label: ["firebreak-quarantine-web"]}
    answer.discard("allow")
    answer.discard("firebreak-quarantine-web")
    assert len(answer) == 0
    again = view.in_namespace("shop")
    assert again is not None and len(again) == 2 and again.tried() == ["allow"]
    view.remove("shop", "firebreak-quarantine-web")
    assert (view.in_namespace("shop") or PolicySet()).by_label() == {}
