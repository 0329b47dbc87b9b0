"""Signals recorded for people to see end ``Suppressed``, never ``Failed``.

A signal without a target (a host event, a KubeletDown), one whose target intake
dropped (a name Kubernetes cannot hold) and one whose namespace does not exist are
incidents with nothing to act on: even a playbook that matches everything (the
shipped ``audit-only``) plans no step for them, and the condition says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from firebreak.api import Severity, Source, Target, TargetKind
from firebreak.config import OperatorConfig
from firebreak.engine import Engine
from firebreak.intake import TARGET_PROBLEM, Intake
from firebreak.matching import PlaybookCandidate
from firebreak.sources.signal import Signal
from tests.engine.recorder import Recorder
from tests.engine.world import OPERATOR_NS, Clock, add_app, condition, playbook, status

AUDIT_ONLY = Path(__file__).resolve().parents[2] / "playbooks" / "audit-only.yaml"


@pytest.fixture
def audit_only() -> PlaybookCandidate:
    shipped = yaml.safe_load(AUDIT_ONLY.read_text())
    return playbook(shipped["metadata"]["name"], *shipped["spec"]["steps"],
                    **{k: v for k, v in shipped["spec"].items() if k != "steps"})


def add(api: Recorder, annotations: dict[str, str] | None = None,
        target: dict[str, Any] | None = None) -> None:
    spec: dict[str, Any] = {"source": "falco", "severity": "critical",
                            "title": "Write below etc"}
    if target is not None:
        spec["target"] = target
    api.add({"kind": "SecurityIncident",
             "metadata": {"name": "host-event", "namespace": OPERATOR_NS,
                          "annotations": annotations or {},
                          "finalizers": ["firebreak.dev/finalizer"]},
             "spec": spec})


def test_a_signal_without_a_target_is_suppressed(
        api: Recorder, engine: Engine, audit_only: PlaybookCandidate) -> None:
    add(api)
    engine.reconcile(OPERATOR_NS, "host-event", [audit_only])
    found = status(api, "host-event", OPERATOR_NS)
    assert found["phase"] == "Suppressed"
    triaged = condition(api, "Triaged", "host-event", OPERATOR_NS)
    assert (triaged["status"], triaged["reason"]) == ("False", "NoTarget")
    assert triaged["message"] == "nothing to act on: the signal names no object"
    assert "actions" not in found and "playbook" not in found


def test_a_target_in_a_missing_namespace_is_suppressed_and_nothing_is_read(
        api: Recorder, engine: Engine, audit_only: PlaybookCandidate) -> None:
    add(api, {TARGET_PROBLEM: "namespace repro-missing does not exist"},
        {"kind": "Pod", "namespace": "repro-missing", "name": "web-1"})
    engine.reconcile(OPERATOR_NS, "host-event", [audit_only])
    assert status(api, "host-event", OPERATOR_NS)["phase"] == "Suppressed"
    triaged = condition(api, "Triaged", "host-event", OPERATOR_NS)
    assert triaged["reason"] == "TargetNotFound"
    assert triaged["message"] == "nothing to act on: namespace repro-missing does not exist"
    assert not [path for _, path in api.requests if "repro-missing" in path]


def test_a_target_dropped_at_intake_says_why(api: Recorder, engine: Engine, clock: Clock,
                                             audit_only: PlaybookCandidate) -> None:
    add_app(api)
    intake = Intake(api.kube(), OperatorConfig(namespace=OPERATOR_NS), clock=clock, retry_for=0)
    recorded = intake.record(Signal(
        source=Source.alertmanager, fingerprint="fp-dot", severity=Severity.critical,
        title="Job failed", alert_name="KubeJobFailed",
        target=Target(kind=TargetKind.job, namespace="shop", name=".")))
    engine.reconcile(recorded.namespace, recorded.name, [audit_only])
    assert status(api, recorded.name, OPERATOR_NS)["phase"] == "Suppressed"
    triaged = condition(api, "Triaged", recorded.name, OPERATOR_NS)
    assert triaged["reason"] == "NoTarget"
    assert triaged["message"].startswith('nothing to act on: Job name "." is not a valid')
