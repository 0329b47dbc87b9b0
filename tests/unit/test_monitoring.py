"""The monitoring shipped in manifests/: the alert rules and the dashboard read only
metrics the operator exports, the Service scrapes the port the operator listens on,
and Prometheus' own promtool accepts the rules and fires them on the series the
operator exports (``promtool test rules``, with Debian's prometheus package)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from firebreak import metrics
from firebreak.config import OperatorConfig

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
MONITORING = MANIFESTS / "monitoring"


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(
        (MONITORING / "prometheusrule.yaml").read_text())["spec"]["groups"]
    return groups


def rules() -> list[dict[str, Any]]:
    return [r for g in rule_groups() for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    found: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return found


def exported() -> set[str]:
    """Every series name the registry can expose (a family's samples appear only once a
    child is observed: the suffixes are derived from the family's type)."""
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}{s}" for s in ("_bucket", "_count", "_sum"))
    return names


def used(expr: str) -> set[str]:
    return set(re.findall(r"\b(?:firebreak|process)_[a-z_]+", expr))


def test_rules_and_dashboard_read_only_exported_metrics() -> None:
    known = exported()
    exprs = [r["expr"] for r in rules()] + [t["expr"] for p in dashboard()["panels"]
                                            for t in p["targets"]]
    unknown = {name for e in exprs for name in used(e)} - known
    assert unknown == set()
    # ... and between them every firebreak metric is shown or alerted on.
    mentioned = {name for e in exprs for name in used(e)}
    families = {f.name for f in metrics.REGISTRY.collect() if f.name.startswith("firebreak_")}
    assert {f for f in families if not any(m.startswith(f) for m in mentioned)} == set()


def test_every_rule_says_how_bad_and_what_happened() -> None:
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names))
    assert {"FirebreakStepsFailing", "FirebreakIncidentNotContained",
            "FirebreakIsolationDefeated", "FirebreakWebhookErrors"} <= set(names)
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_dashboard_is_grafana_json_on_a_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] == "firebreak"
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"


def test_the_service_scrapes_the_port_the_operator_serves() -> None:
    service = yaml.safe_load((MANIFESTS / "metrics-service.yaml").read_text())
    port = int(OperatorConfig().metrics_address.rpartition(":")[2])
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port]
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert "metrics-service.yaml" in yaml.safe_load(
        (MANIFESTS / "kustomization.yaml").read_text())["resources"]
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        assert (MONITORING / name).exists(), name
    (scrape,) = yaml.safe_load((MONITORING / "prometheus-scrape.yaml").read_text())
    # The job name the rules expect (FirebreakMetricsDown), whichever way it is scraped.
    assert scrape["job_name"] == service["metadata"]["name"] == "firebreak-metrics"


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed: "
                                                             "run `make alerting`")


def promtool(*args: str) -> str:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    assert f"SUCCESS: {len(rules())} rules found" in promtool("check", "rules",
                                                              str(tmp_path / "rules.yml"))


def firing(alert: str, at: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": labels}]}


def silent(alert: str, at: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


@needs_promtool
def test_the_rules_fire_on_the_series_the_operator_exports(tmp_path: Path) -> None:
    """Series as the operator exports them: counters start at zero (metrics._initialise).
    When each rule fires is what is tested here; the annotations' templates are checked
    above (promtool check rules), so they are left out rather than restated."""
    groups = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"}
                              for r in g["rules"]]} for g in rule_groups()]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    series = [
        {"series": 'firebreak_steps_total{action="scaleDown",outcome="refused"}',
         "values": "0x5 1x20"},
        {"series": 'firebreak_steps_total{action="isolateNetwork",outcome="applied"}',
         "values": "0x5 4x20"},
        {"series": "firebreak_oldest_uncontained_incident_seconds",
         "values": "0+60x30"},
        {"series": "firebreak_incidents_isolation_defeated", "values": "0x5 1x20"},
        {"series": 'firebreak_webhook_requests_total{endpoint="/alertmanager",code="503"}',
         "values": "0x5 0+10x20"},
        {"series": 'firebreak_reverts_total{action="cordonNode",outcome="failed"}',
         "values": "0x5 1x20"},
        {"series": 'firebreak_notifications_total{event="Contained",outcome="failed"}',
         "values": "0x5 1x20"},
        {"series": 'up{job="firebreak-metrics",instance="a"}', "values": "1x5 0x20"},
    ]
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series, "alert_rule_test": [
            silent("FirebreakStepsFailing", "4m"),
            firing("FirebreakStepsFailing", "8m",
                   {"severity": "warning", "action": "scaleDown", "outcome": "refused"}),
            silent("FirebreakIncidentNotContained", "15m"),
            firing("FirebreakIncidentNotContained", "18m", {"severity": "critical"}),
            silent("FirebreakIsolationDefeated", "6m"),
            firing("FirebreakIsolationDefeated", "8m", {"severity": "critical"}),
            silent("FirebreakWebhookErrors", "8m"),
            firing("FirebreakWebhookErrors", "14m", {"severity": "warning"}),
            firing("FirebreakRevertsFailing", "8m",
                   {"severity": "warning", "action": "cordonNode"}),
            firing("FirebreakNotificationsFailing", "8m",
                   {"severity": "warning", "event": "Contained"}),
            silent("FirebreakMetricsDown", "8m"),
            firing("FirebreakMetricsDown", "12m",
                   {"severity": "critical", "job": "firebreak-metrics", "instance": "a"}),
        ]}]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    assert "SUCCESS" in promtool("test", "rules", str(tmp_path / "tests.yml"))
