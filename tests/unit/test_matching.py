"""Playbook matching and tenancy, table-driven."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from firebreak.api import ResponsePlaybookSpec, SecurityIncidentSpec
from firebreak.matching import PlaybookCandidate, select_playbook
from firebreak.sources.external import ExternalSignal, signal_from_external
from firebreak.sources.falco import FalcoEvent, signal_from_falco
from firebreak.sources.signal import Signal
from firebreak.sources.trivy import (
    signal_from_config_audit_report,
    signal_from_exposed_secret_report,
    signal_from_vulnerability_report,
)

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


# --- Scanner findings, told apart -----------------------------------------------------
# Incidents as intake stores them for the sample payloads: a playbook tells the Trivy
# report kinds and the posted signals apart by source, by alert name (for Trivy the
# kind of finding, for a posted signal the sender's rule or check ID) and by labels
# (the report kind, each rule or check found, the sender's name).

REPO = Path(__file__).resolve().parents[2]
PAYLOADS = REPO / "tests" / "fixtures" / "payloads"


def stored(signal: Signal | None) -> SecurityIncidentSpec:
    """The spec intake writes for a signal (its workload as the source named it)."""
    assert signal is not None
    spec: dict[str, Any] = {"source": signal.source.value, "fingerprint": signal.fingerprint,
                            "severity": signal.severity.value, "title": signal.title,
                            "labels": signal.labels}
    if signal.alert_name:
        spec["alertName"] = signal.alert_name
    if signal.target is not None:
        spec["target"] = signal.target.to_api()
    return SecurityIncidentSpec.model_validate(spec)


def sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PAYLOADS / name).read_text())
    return loaded


def posted(**fields: Any) -> SecurityIncidentSpec:
    """The README's example of POST /signals, with these fields changed."""
    return stored(signal_from_external(ExternalSignal.model_validate({
        "source": "kube-bench", "fingerprint": "5.2.1/shop/storefront", "severity": "critical",
        "title": "Privileged container in storefront", "alertName": "5.2.1",
        "labels": {"team": "payments"},
        "target": {"kind": "Deployment", "namespace": "shop", "name": "storefront"},
        **fields})))


FINDINGS = {
    "secret": stored(signal_from_exposed_secret_report(
        sample("trivy_ExposedSecretReport_replicaset-app-67b77f5965-app_docs.yaml"))),
    "audit": stored(signal_from_config_audit_report(
        sample("trivy_ConfigAuditReport_replicaset-nginx-6d4cf56db6_docs.yaml"))),
    "vulnerable": stored(signal_from_vulnerability_report(
        sample("trivy_VulnerabilityReport_replicaset-nginx-6d4cf56db6-nginx_CRITICAL_docs.yaml"))),
    "posted": posted(),
    "posted-as-falco": posted(source="falco", alertName="Terminal shell in container"),
    "posted-as-trivy": posted(source="trivy", alertName="ExposedSecret"),
    "falco": stored(signal_from_falco(FalcoEvent.model_validate(json.loads(
        (PAYLOADS / "falco_TerminalShellInContainer_default-kubecon_2023.json").read_text())))),
}


def answered(match: dict[str, Any]) -> set[str]:
    return {name for name, spec in FINDINGS.items()
            if select_playbook(spec, "default", [playbook("p", match=match)], OPERATOR_NS)}


@pytest.mark.parametrize(("match", "expected"), [
    ({"sources": ["trivy"]}, {"secret", "audit", "vulnerable"}),
    ({"sources": ["external"]}, {"posted", "posted-as-falco", "posted-as-trivy"}),
    # A sender's name is a label, never the source: no script passes for Falco or Trivy.
    ({"sources": ["falco"]}, {"falco"}),
    ({"alertNames": ["ExposedSecret"]}, {"secret", "posted-as-trivy"}),
    ({"sources": ["trivy"], "alertNames": ["ExposedSecret"]}, {"secret"}),
    ({"alertNames": ["MisconfiguredWorkload"]}, {"audit"}),
    ({"alertNames": ["VulnerableWorkload"]}, {"vulnerable"}),
    ({"alertNames": ["5.2.1"]}, {"posted"}),
    ({"sources": ["trivy"], "alertNames": ["5.2.1"]}, set()),
    ({"labelSelector": {"matchLabels": {"trivy_report": "ExposedSecretReport"}}}, {"secret"}),
    ({"labelSelector": {"matchLabels": {"trivy_report": "ConfigAuditReport"}}}, {"audit"}),
    ({"labelSelector": {"matchExpressions": [
        {"key": "rule/stripe-access-token", "operator": "Exists"}]}}, {"secret"}),
    ({"labelSelector": {"matchExpressions": [
        {"key": "check/privilegeEscalationAllowed", "operator": "In", "values": ["CRITICAL"]}]}},
     {"audit"}),
    ({"labelSelector": {"matchExpressions": [
        {"key": "check/hostPIDSet", "operator": "Exists"}]}}, set()),  # it passed
    ({"labelSelector": {"matchLabels": {"source": "kube-bench"}}}, {"posted"}),
    ({"labelSelector": {"matchLabels": {"source": "falco"}}}, {"posted-as-falco"}),
])
def test_scanner_findings_are_told_apart(match: dict[str, Any], expected: set[str]) -> None:
    assert answered(match) == expected


def ready_playbooks() -> list[PlaybookCandidate]:
    found = []
    for path in sorted((REPO / "playbooks").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        found.append(PlaybookCandidate(body["metadata"]["namespace"], body["metadata"]["name"],
                                       ResponsePlaybookSpec.model_validate(body["spec"])))
    return found


@pytest.mark.parametrize(("finding", "chosen"), [
    ("secret", "exposed-secret"),
    ("posted-as-trivy", "audit-only"),  # a script's "ExposedSecret" is not Trivy's
    ("audit", "audit-only"),
    ("vulnerable", "audit-only"),
    ("posted", "audit-only"),
    ("posted-as-falco", "audit-only"),
    ("falco", "shell-in-container"),
])
def test_the_ready_playbooks_answer_each_sample(finding: str, chosen: str) -> None:
    picked = select_playbook(FINDINGS[finding], "default", ready_playbooks(), OPERATOR_NS)
    assert picked is not None and picked.name == chosen
