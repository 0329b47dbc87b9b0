"""The responder's commands as a person reads them: the list, an incident as a timeline,
the outcome of an evidence check, and the command line (``firebreak`` and the kubectl
plugin). Talking to a cluster is tested end to end (tests/e2e/test_seen_and_heard.py)."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pytest

from firebreak.api import EvidenceItem, EvidenceStored
from firebreak.cli import parser
from firebreak.evidence import Finding
from firebreak.responder import age, render_incident, render_list, render_verification

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
SHA = "a" * 64


def incident(name: str, phase: str | None = "Contained", **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "shop", "creationTimestamp": "2025-03-01T11:58:30Z"},
        "spec": {"source": "alertmanager", "severity": "critical", "title": "Crypto miner",
                 "alertName": "CryptoMiner",
                 "target": {"kind": "Pod", "namespace": "shop", "name": "web-1"}},
        "status": {**({"phase": phase} if phase else {}), **status},
    }
    return body


def test_the_list_is_a_table() -> None:
    assert render_list([
        incident("miner", playbook={"name": "crypto-miner", "namespace": "firebreak-system"},
                 signalCount=3),
        incident("new", None),
    ], NOW) == (
        "NAMESPACE   NAME    PHASE       SEVERITY   TARGET           PLAYBOOK       SIGNALS   AGE\n"
        "shop        miner   Contained   critical   Pod shop/web-1   crypto-miner   3         1m\n"
        "shop        new     Pending     critical   Pod shop/web-1   -              0         1m")
    assert render_list([], NOW) == "No incidents."


@pytest.mark.parametrize(("created", "shown"), [
    ("2025-03-01T12:00:00Z", "0s"), ("2025-03-01T11:59:01Z", "59s"),
    ("2025-03-01T11:59:00Z", "1m"), ("2025-03-01T10:59:00Z", "1h"),
    ("2025-02-27T11:00:00Z", "2d"), ("2025-03-01T12:00:05Z", "0s"), (None, "-"),
])
def test_ages_are_short(created: str | None, shown: str) -> None:
    assert age(created, NOW) == shown


def test_an_incident_reads_as_a_timeline() -> None:
    body = incident(
        "miner", playbook={"name": "crypto-miner", "namespace": "firebreak-system"},
        mode="enforce", signalCount=2, firstSeen="2025-03-01T11:58:00Z",
        lastSeen="2025-03-01T11:59:00Z", timeToContainSeconds=1.25,
        conditions=[{"type": "Contained", "status": "True", "reason": "StepsApplied",
                     "message": "2 of 2 steps applied",
                     "lastTransitionTime": "2025-03-01T11:58:01Z"}],
        actions=[{"step": "isolate", "action": "isolateNetwork", "state": "Applied",
                  "message": "isolated 1 pod"},
                 {"step": "evidence", "action": "snapshot", "state": "Applied",
                  "message": "stored", "evidence": [{
                      "kind": "Secret", "namespace": "firebreak-system", "name": "ev-0",
                      "items": [{"key": "index.yaml", "sha256": SHA},
                                {"key": "a.log", "sha256": SHA}]}]}],
        timeline=[{"time": "2025-03-01T11:58:00.5Z", "reason": "PlaybookSelected",
                   "message": "playbook firebreak-system/crypto-miner (2 steps, enforce)"}])
    body["spec"]["approval"] = {"decision": "approve", "by": "alice", "reason": "seen it"}
    body["spec"]["resolution"] = {"reason": "false positive", "by": "bob"}
    assert render_incident(body) == "\n".join([
        "Incident shop/miner: Crypto miner",
        "  Phase:     Contained",
        "  Severity:  critical",
        "  Source:    alertmanager (CryptoMiner)",
        "  Target:    Pod shop/web-1",
        "  Playbook:  firebreak-system/crypto-miner (enforce)",
        "  Signals:   2 (first 2025-03-01 11:58:00, last 2025-03-01 11:59:00)",
        "  Contained: 1.25s after the first signal",
        "  Decision:  approve by alice: seen it",
        "  Resolved:  by bob: false positive",
        "",
        "Conditions:",
        "  Contained   True   StepsApplied   2 of 2 steps applied",
        "",
        "Steps:",
        "  1   isolate    isolateNetwork   Applied   isolated 1 pod",
        "  2   evidence   snapshot         Applied   stored",
        "",
        "Timeline (UTC):",
        "  2025-03-01 11:58:00  PlaybookSelected: playbook firebreak-system/crypto-miner "
        "(2 steps, enforce)",
        "",
        "Evidence: 2 items in 1 object(s), SHA-256 recorded: "
        "firebreak evidence verify miner -n shop",
    ])


def test_a_new_incident_shows_what_is_known() -> None:
    body = incident("new", None)
    body["spec"].pop("alertName")
    body["spec"].pop("target")
    assert render_incident(body) == "\n".join([
        "Incident shop/new: Crypto miner",
        "  Phase:     Pending",
        "  Severity:  critical",
        "  Source:    alertmanager",
        "  Target:    -",
        "  Playbook:  -",
        "  Signals:   0 (first -, last -)",
    ])


RECORD = [EvidenceStored(kind="Secret", namespace="firebreak-system", name="ev-0",
                         items=[EvidenceItem(key="index.yaml", sha256=SHA)])]


@pytest.mark.parametrize(("recorded", "findings", "code", "printed"), [
    (RECORD, [], 0, "shop/miner: verified 1 items in 1 object(s): every SHA-256 matches the "
                    "incident's record\n"),
    (RECORD, [Finding("Secret firebreak-system/ev-0 index.yaml", "changed")], 1,
     "shop/miner: 1 problem(s) in 1 recorded items:\n"
     "  Secret firebreak-system/ev-0 index.yaml: changed\n"),
    ([], [], 1, "shop/miner: no evidence is recorded in the incident's status\n"),
])
def test_the_outcome_of_a_check_is_its_exit_status(
        recorded: list[EvidenceStored], findings: list[Finding], code: int, printed: str) -> None:
    out = io.StringIO()
    assert render_verification("shop/miner", recorded, findings, out) == code
    assert out.getvalue() == printed


def test_the_command_line_and_the_kubectl_plugin_take_the_same_commands() -> None:
    args = parser().parse_args(["approve", "miner", "-n", "shop", "--context", "prod"])
    assert (args.command, args.name, args.namespace, args.context, args.reason) == (
        "approve", "miner", "shop", "prod", None)
    args = parser("kubectl firebreak", with_run=False).parse_args(
        ["evidence", "verify", "miner", "--kubeconfig", "/k"])
    assert (args.prog, args.command, args.evidence_command, args.kubeconfig) == (
        "kubectl firebreak", "evidence", "verify", "/k")
    with pytest.raises(SystemExit):
        parser().parse_args(["reject", "miner"])  # a rejection says why
    with pytest.raises(SystemExit):
        parser("kubectl firebreak", with_run=False).parse_args(["run"])
