"""Playbook matching and tenancy, table-driven."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from firebreak.api import ResponsePlaybookSpec, SecurityIncidentSpec
from firebreak.matching import PlaybookCandidate, select_playbook

OPERATOR_NS = "firebreak-system"
STEPS = [{"name": "isolate", "action": "isolateNetwork"}]


def incident(**overrides: Any) -> SecurityIncidentSpec:
    spec: dict[str, Any] = {
        "source": "falco", "severity": "high", "title": "shell in container",
        "alertName": "Terminal shell in container",
        "target": {"kind": "Pod", "namespace": "shop", "name": "web-1"},
        "labels": {"team": "payments", "env": "prod"},
    }
    spec.update(overrides)
    return SecurityIncidentSpec.model_validate(spec)


def playbook(name: str, namespace: str = OPERATOR_NS, **spec: Any) -> PlaybookCandidate:
    return PlaybookCandidate(namespace, name, ResponsePlaybookSpec.model_validate(
        {"steps": STEPS, **spec}))


@pytest.mark.parametrize(("match", "expected"), [
    ({}, True),
    ({"sources": ["falco"]}, True),
    ({"sources": ["trivy", "alertmanager"]}, False),
    ({"severity": "high"}, True),
    ({"severity": "medium"}, True),
    ({"severity": "critical"}, False),
    ({"alertNames": ["Terminal shell in container"]}, True),
    ({"alertNames": ["Crypto miner"]}, False),
    ({"labelSelector": {"matchLabels": {"team": "payments"}}}, True),
    ({"labelSelector": {"matchLabels": {"team": "search"}}}, False),
    ({"labelSelector": {"matchExpressions": [
        {"key": "env", "operator": "In", "values": ["prod", "staging"]}]}}, True),
    ({"labelSelector": {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}},
     False),
    ({"labelSelector": {"matchExpressions": [{"key": "owner", "operator": "Exists"}]}}, False),
    ({"labelSelector": {"matchExpressions": [{"key": "owner", "operator": "DoesNotExist"}]}}, True),
    ({"namespaces": ["shop"]}, True),
    ({"namespaces": ["billing"]}, False),
    ({"sources": ["falco"], "severity": "critical"}, False),
])
def test_match_fields(match: dict[str, Any], expected: bool) -> None:
    chosen = select_playbook(incident(), "shop", [playbook("p", match=match)], OPERATOR_NS)
    assert (chosen is not None) is expected


def test_highest_priority_wins_and_ties_go_by_name() -> None:
    candidates = [playbook("zeta", priority=10), playbook("alpha", priority=10),
                  playbook("urgent", priority=50), playbook("low", priority=-1)]
    assert select_playbook(incident(), "shop", candidates, OPERATOR_NS).name == "urgent"
    candidates = candidates[:2] + candidates[3:]
    assert select_playbook(incident(), "shop", candidates, OPERATOR_NS).name == "alpha"
    assert select_playbook(incident(), "shop", list(reversed(candidates)), OPERATOR_NS).name == "alpha"


@pytest.mark.parametrize(("playbook_ns", "incident_ns", "target_ns", "allowed"), [
    (OPERATOR_NS, "shop", "shop", True),      # the operator's playbooks answer everywhere
    (OPERATOR_NS, OPERATOR_NS, "shop", True),
    ("shop", "shop", "shop", True),            # a team's playbook answers its own namespace
    ("shop", "billing", "billing", False),     # ... and no other
    ("shop", "shop", "billing", False),        # ... not even through an incident in its namespace
    ("billing", "shop", "shop", False),
])
def test_tenancy(playbook_ns: str, incident_ns: str, target_ns: str, allowed: bool) -> None:
    spec = incident(target={"kind": "Pod", "namespace": target_ns, "name": "web-1"})
    chosen = select_playbook(spec, incident_ns, [playbook("p", namespace=playbook_ns)], OPERATOR_NS)
    assert (chosen is not None) is allowed


def test_node_incident_is_scoped_to_its_own_namespace() -> None:
    spec = incident(target={"kind": "Node", "name": "node-1"})
    assert select_playbook(spec, "ops", [playbook("p", namespace="ops")], OPERATOR_NS) is not None
    assert select_playbook(spec, "ops", [playbook("p", namespace="dev")], OPERATOR_NS) is None


def test_no_playbook_matches() -> None:
    assert select_playbook(incident(), "shop", [], OPERATOR_NS) is None


def test_a_candidate_cannot_change() -> None:
    candidate = playbook("p")
    with pytest.raises(dataclasses.FrozenInstanceError):
        candidate.name = "q"  # type: ignore[misc]
