"""Sources turn real payloads into signals: Alertmanager, Falco, Trivy and Prometheus.

The payloads in ``tests/fixtures/payloads`` are what those systems really send
(see SOURCES.md there); each trap they hold has a test here.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from firebreak.api import Severity, Source, Target, TargetKind
from firebreak.sources.alertmanager import (
    AlertmanagerAlert,
    AlertmanagerPayload,
    signals_from_alertmanager,
)
from firebreak.sources.falco import FalcoEvent, label_key, signal_from_falco
from firebreak.sources.prometheus import signals_from_alerts_query
from firebreak.sources.signal import (
    Signal,
    SignalStatus,
    fingerprint_of,
    incident_name,
    json_size,
    labels_fingerprint,
)
from firebreak.sources.trivy import (
    TrivyThresholds,
    VulnerabilityReport,
    signal_from_config_audit_report,
    signal_from_exposed_secret_report,
    signal_from_vulnerability_report,
)

PAYLOADS = Path(__file__).resolve().parent.parent / "fixtures" / "payloads"

NGINX_REPORT = "trivy_VulnerabilityReport_replicaset-nginx-6d4cf56db6-nginx_CRITICAL_docs.yaml"
COREDNS_REPORT = "trivy_VulnerabilityReport_replicaset-coredns-558bd4d5db_kube-system_envtest.yaml"
HASHED_REPORT = "trivy_VulnerabilityReport_ADAPTED_name-hash_replicaset-long-name.yaml"
SECRET_REPORT = "trivy_ExposedSecretReport_replicaset-app-67b77f5965-app_docs.yaml"
AUDIT_REPORT = "trivy_ConfigAuditReport_replicaset-nginx-6d4cf56db6_docs.yaml"
FALCO_DOCS = "falco_TerminalShellInContainer_default-kubecon_2023.json"
FALCO_ALPINE = "falco_TerminalShellInContainer_default-alpine_2021.json"
ETCD_FIRING = "am_v4_firing_etcdDatabaseHighFragmentationRatio_kube-system.json"
ETCD_RESOLVED = "am_v4_resolved_etcdDatabaseHighFragmentationRatio_kube-system.json"


def text(name: str) -> str:
    return (PAYLOADS / name).read_text()


def load_json(name: str) -> Any:
    return json.loads(text(name))


def load_yaml(name: str) -> Any:
    return yaml.safe_load(text(name))


def am_signals(body: Any) -> list[Signal]:
    if isinstance(body, str):
        body = load_json(body)
    return signals_from_alertmanager(AlertmanagerPayload.model_validate(body))


def falco_signal(body: Any) -> Signal:
    if isinstance(body, str):
        body = load_json(body)
    return signal_from_falco(FalcoEvent.model_validate(body))


def rfc3339(value: str) -> dt.datetime:
    """A UTC RFC 3339 time; Python's parser takes at most microseconds."""
    head, _, fraction = value.removesuffix("Z").partition(".")
    return dt.datetime.fromisoformat(f"{head}.{fraction[:6]:0<6}+00:00")


def pod(namespace: str, name: str) -> Target:
    return Target(kind=TargetKind.pod, namespace=namespace, name=name)


# === Alertmanager =====================================================================


@pytest.mark.parametrize(("fixture", "alert_name", "severity", "targets"), [
    pytest.param(ETCD_FIRING, "etcdDatabaseHighFragmentationRatio", Severity.medium,
                 [pod("kube-system", "etcd-kind-control-plane")], id="etcd"),
    pytest.param("am_noversion_firing_KubePodCrashLooping_pp1.json", "KubePodCrashLooping",
                 Severity.critical, [pod("pp1", "dd1-0")], id="crashlooping"),
    pytest.param("am_noversion_firing_KubePodNotReady_2alerts_t1.json", "KubePodNotReady",
                 Severity.critical,
                 [pod("t1", "s2i-1-viafnz-5474c8b5b7-px7kz"), pod("t1", "s2i-1-viafnz-89f49c678-2mzsm")],
                 id="podnotready-2-alerts"),
    # Trap: `pod` is kube-state-metrics' pod; the workload label names the subject.
    pytest.param("am_noversion_firing_KubeDeploymentReplicasMismatch_default-nginx.json",
                 "KubeDeploymentReplicasMismatch", Severity.critical,
                 [Target(kind=TargetKind.deployment, namespace="default", name="nginx")],
                 id="deployment-not-ksm-pod"),
    pytest.param("am_noversion_firing_KubeStatefulSetReplicasMismatch_pp1-dd1.json",
                 "KubeStatefulSetReplicasMismatch", Severity.critical,
                 [Target(kind=TargetKind.stateful_set, namespace="pp1", name="dd1")],
                 id="statefulset-not-ksm-pod"),
    # Trap: `job` is "kube-state-metrics" and `pod` its pod; the Job is `job_name`.
    pytest.param("am_noversion_firing_KubeJobFailed_demo-project.json", "KubeJobFailed",
                 Severity.medium, [Target(kind=TargetKind.job, namespace="demo-project", name="dddd")],
                 id="job-not-ksm-pod"),
    # Trap: no namespace, no pod, no node: nothing to act on.
    pytest.param("am_noversion_firing_KubeletDown_no-namespace.json", "KubeletDown",
                 Severity.critical, [None], id="kubeletdown-no-target"),
    pytest.param("am_v4_firing_2alerts_HighCPUTemperature_zulip-fixture.json", "High CPU Temperature",
                 Severity.critical, [None, None], id="non-kubernetes-2-alerts"),
])
def test_alertmanager_signals(fixture: str, alert_name: str, severity: Severity,
                              targets: list[Target | None]) -> None:
    body = load_json(fixture)
    signals = am_signals(body)
    assert [s.target for s in signals] == targets  # one signal per alert, in order
    for signal, alert in zip(signals, body["alerts"], strict=True):
        assert signal.source is Source.alertmanager
        assert signal.status is SignalStatus.firing
        assert signal.alert_name == alert_name
        assert signal.severity is severity
        assert signal.fingerprint == alert["fingerprint"]
        assert signal.labels == alert["labels"]
        assert signal.time == rfc3339(alert["startsAt"])


def test_eight_alerts_give_eight_signals() -> None:
    body = load_json("am_noversion_firing_CPUThrottlingHigh_8alerts_kube-system.json")
    signals = am_signals(body)
    assert len(signals) == len(body["alerts"]) == 8
    assert len({s.fingerprint for s in signals}) == 8
    assert len({incident_name(s) for s in signals}) == 8
    assert all(s.target and s.target.kind is TargetKind.pod for s in signals)
    # Two alerts about two containers of one pod are two signals about one pod.
    assert signals[6].target == signals[7].target
    assert signals[6].labels["container"] != signals[7].labels["container"]


def test_title_and_description_come_from_annotations() -> None:
    [etcd] = am_signals(ETCD_FIRING)
    assert etcd.title == "etcd database size in use is less than 50% of the actual allocated storage."
    assert etcd.description and etcd.description.startswith('etcd cluster "kube-etcd"')
    # kube-prometheus' older rules put the text in `message` and have no summary.
    [crash] = am_signals("am_noversion_firing_KubePodCrashLooping_pp1.json")
    assert crash.title == "KubePodCrashLooping"
    assert crash.description == "Pod pp1/dd1-0 (busybox-3jb7u6) is restarting 1.07 times / 5 minutes."


def test_resolved_payload_gives_resolved_signals() -> None:
    [signal] = am_signals(ETCD_RESOLVED)
    assert signal.status is SignalStatus.resolved


def test_each_alert_keeps_its_own_status() -> None:
    body = load_json("am_noversion_firing_KubePodNotReady_2alerts_t1.json")
    body["alerts"][1]["status"] = "resolved"  # a group that is still firing overall
    assert [s.status for s in am_signals(body)] == [SignalStatus.firing, SignalStatus.resolved]


def test_same_alert_in_two_deliveries_names_one_incident() -> None:
    [firing] = am_signals(ETCD_FIRING)
    [resolved] = am_signals(ETCD_RESOLVED)
    # The annotations differ between the deliveries (20.99% vs 21.03%); the name does not.
    assert firing.description != resolved.description
    assert incident_name(firing) == incident_name(resolved)


def test_without_a_fingerprint_the_labels_identify_the_alert() -> None:
    body = load_json("am_v4_firing_truncatedAlerts2_unit-test.json")
    [first] = am_signals(body)
    assert first.fingerprint == labels_fingerprint({"g": "h"})
    again = copy.deepcopy(body)
    again["alerts"][0]["annotations"] = {"i": "changed"}
    again["alerts"][0]["startsAt"] = "2020-01-01T13:00:00Z"
    [second] = am_signals(again)
    assert incident_name(first) == incident_name(second)
    other = copy.deepcopy(body)
    other["alerts"][0]["labels"] = {"g": "other"}
    assert incident_name(am_signals(other)[0]) != incident_name(first)


def test_an_alert_without_name_or_summary_still_has_a_title() -> None:
    [signal] = am_signals("am_v4_firing_truncatedAlerts2_unit-test.json")
    assert signal.alert_name is None
    assert signal.title == "Alertmanager alert"
    assert signal.target is None


def test_alerts_are_built_by_field_name_or_parsed_from_the_wire() -> None:
    # camelCase names are the wire's; Python code builds the same model by field name.
    wire = load_json(ETCD_FIRING)["alerts"][0]
    parsed = AlertmanagerAlert.model_validate(wire)
    built = AlertmanagerAlert(
        status=wire["status"], labels=wire["labels"], annotations=wire["annotations"],
        starts_at=rfc3339(wire["startsAt"]), ends_at=rfc3339(wire["endsAt"]),
        generator_url=wire["generatorURL"], fingerprint=wire["fingerprint"])
    assert parsed.generator_url is not None and parsed.generator_url.startswith("http://kube-prometheus")
    assert built == parsed
    with pytest.raises(ValidationError):
        parsed.status = "resolved"  # type: ignore[misc]


def test_older_bodies_without_version_are_accepted() -> None:
    old = AlertmanagerPayload.model_validate(
        load_json("am_noversion_firing_KubePodCrashLooping_pp1.json"))
    assert (old.version, old.group_key, old.truncated_alerts) == (None, None, None)
    assert old.external_url == "http://alertmanager-main-2:9093"
    new = AlertmanagerPayload.model_validate(load_json(ETCD_FIRING))
    assert (new.version, new.group_key, new.truncated_alerts) == ("4", '{}:{namespace="kube-system"}', 0)
    truncated = AlertmanagerPayload.model_validate(load_json("am_v4_firing_truncatedAlerts2_unit-test.json"))
    assert truncated.truncated_alerts == 2
    assert truncated.alerts[0].fingerprint is None


def test_unknown_fields_are_accepted() -> None:
    body = load_json(ETCD_FIRING)
    body["someFutureField"] = {"x": 1}
    body["alerts"][0]["silenceURL"] = "http://alertmanager/#/silences/new"
    [signal] = am_signals(body)
    assert signal.fingerprint == "bc6e3ddcbe61b398"


def _broken(change: Any) -> dict[str, Any]:
    body: dict[str, Any] = load_json(ETCD_FIRING)
    change(body)
    return body


def _set_alert(key: str, value: Any) -> Any:
    return lambda body: body["alerts"][0].__setitem__(key, value)


@pytest.mark.parametrize("body", [
    pytest.param(_broken(lambda b: b.__setitem__("alerts", b["alerts"][0])), id="alerts-not-a-list"),
    pytest.param(_broken(lambda b: b.__setitem__("alerts", [])), id="alerts-empty"),
    pytest.param(_broken(lambda b: b.__delitem__("alerts")), id="alerts-missing"),
    pytest.param(_broken(lambda b: b.__delitem__("receiver")), id="receiver-missing"),
    pytest.param(_broken(lambda b: b.__setitem__("status", "pending")), id="status-pending"),
    pytest.param(_broken(_set_alert("status", "active")), id="alert-status-active"),
    pytest.param(_broken(_set_alert("status", None)), id="alert-status-null"),
    pytest.param(_broken(_set_alert("labels", {"severity": 1})), id="label-value-int"),
    pytest.param(_broken(_set_alert("labels", {"severity": None})), id="label-value-null"),
    pytest.param(_broken(_set_alert("labels", ["alertname=x"])), id="labels-a-list"),
    pytest.param(_broken(lambda b: b["alerts"][0].__delitem__("labels")), id="labels-missing"),
    pytest.param(_broken(_set_alert("annotations", {"summary": {"text": "x"}})), id="annotation-object"),
    pytest.param(_broken(_set_alert("startsAt", "yesterday")), id="startsAt-not-a-time"),
    pytest.param(_broken(_set_alert("startsAt", "2022-12-14T01:32:49")), id="startsAt-no-zone"),
    pytest.param(_broken(lambda b: b.__setitem__("truncatedAlerts", "2")), id="truncated-a-string"),
    pytest.param(_broken(lambda b: b.__setitem__("truncatedAlerts", -1)), id="truncated-negative"),
    pytest.param(_broken(lambda b: b.__setitem__("commonLabels", {"a": 1})), id="common-label-int"),
    pytest.param(_broken(lambda b: b.__setitem__("alerts", ["alert"])), id="alert-a-string"),
    # Falcosidekick's Alertmanager output is a bare list (for /api/v2/alerts),
    # not a webhook body: sent to the webhook by mistake, it is refused.
    pytest.param(load_json("falcosidekick_to_alertmanager_api-v2-alerts_TestRule_unit-test.json"),
                 id="api-v2-alert-list"),
    pytest.param("not an object", id="a-string"),
])
def test_malformed_alertmanager_bodies_are_refused(body: Any) -> None:
    with pytest.raises(ValidationError):
        AlertmanagerPayload.model_validate(body)


# --- Falco through Falcosidekick and Alertmanager ---------------------------------------


def via_alertmanager(fixture: str) -> list[Signal]:
    """Deliver the alerts Falcosidekick posted to Alertmanager as Alertmanager's
    webhook would: the same labels and annotations, wrapped in a notification."""
    alerts = [{"status": "firing", "startsAt": "2023-05-25T13:44:05.478Z", **alert}
              for alert in load_json(fixture)]
    return am_signals({"receiver": "firebreak", "status": "firing", "alerts": alerts})


@pytest.mark.parametrize(("fixture", "severity", "target"), [
    pytest.param("falcosidekick_to_alertmanager_api-v2-alerts_DERIVED_from_falco-docs_TerminalShell.json",
                 Severity.critical, pod("default", "kubecon"), id="terminal-shell"),
    pytest.param("falcosidekick_to_alertmanager_api-v2-alerts_TestRule_unit-test.json",
                 Severity.info, None, id="test-rule-information"),
    pytest.param("falcosidekick_to_alertmanager_api-v2-alerts_syscall-drop_unit-test.json",
                 Severity.critical, None, id="syscall-drop-host"),
])
def test_falcosidekick_alerts_through_alertmanager(fixture: str, severity: Severity,
                                                   target: Target | None) -> None:
    [signal] = via_alertmanager(fixture)
    [alert] = load_json(fixture)
    assert signal.source is Source.alertmanager
    assert signal.severity is severity
    assert signal.target == target
    assert signal.alert_name == alert["labels"]["rule"]
    assert signal.title == alert["annotations"]["summary"]
    assert signal.description == alert["annotations"]["description"]
    # Falcosidekick's alerts carry no fingerprint until Alertmanager adds one.
    assert signal.fingerprint == labels_fingerprint(alert["labels"])


@pytest.mark.parametrize(("severity", "priority", "expected"), [
    ("critical", "Critical", Severity.critical),
    ("warning", "Error", Severity.medium),   # an explicit severity wins
    (None, "Error", Severity.high),          # no severity: Falco's priority
    (None, "Notice", Severity.low),
    ("bogus", "Emergency", Severity.critical),  # an unknown severity word: the priority
    (None, None, Severity.medium),
])
def test_severity_label_or_else_priority(severity: str | None, priority: str | None,
                                         expected: Severity) -> None:
    labels = {"alertname": "Write below etc", "source": "falco", "rule": "Write below etc"}
    if severity:
        labels["severity"] = severity
    if priority:
        labels["priority"] = priority
    [signal] = am_signals({"receiver": "r", "status": "firing",
                           "alerts": [{"status": "firing", "labels": labels}]})
    assert signal.severity is expected


def test_both_falco_paths_agree() -> None:
    """The Falco event and the alert Falcosidekick derives from it name the same
    target and carry the output fields under the same label names and values."""
    direct = falco_signal(FALCO_DOCS)
    [forwarded] = via_alertmanager(
        "falcosidekick_to_alertmanager_api-v2-alerts_DERIVED_from_falco-docs_TerminalShell.json")
    assert direct.target == forwarded.target == pod("default", "kubecon")
    assert direct.severity is forwarded.severity is Severity.critical
    fields = {label_key(key) for key in load_json(FALCO_DOCS)["output_fields"]}
    assert {k: direct.labels[k] for k in fields} == {k: forwarded.labels[k] for k in fields}


# === Falco ============================================================================


@pytest.mark.parametrize(("fixture", "rule", "severity", "target"), [
    pytest.param(FALCO_DOCS, "Terminal shell in container", Severity.critical,
                 pod("default", "kubecon"), id="docs-shell"),
    pytest.param(FALCO_ALPINE, "Terminal shell in container", Severity.low,
                 pod("default", "alpine"), id="blog-shell-older-falco"),
    pytest.param("falco_TerminalShellInContainer_default-deploymentpod.json",
                 "Terminal shell in container", Severity.low,
                 pod("default", "alpine-deployment-77789455d6-m7flp"), id="deployment-pod"),
    pytest.param("falco_ContactK8SAPIServerFromContainer_openfaas-fn.json",
                 "Contact K8S API Server From Container", Severity.low,
                 pod("openfaas-fn", "falco-pod-delete-7dc9f5fbb8-gbfk7"), id="api-server-openfaas"),
    pytest.param("falco_ContactK8SAPIServerFromContainer_fission-function.json",
                 "Contact K8S API Server From Container", Severity.low,
                 pod("fission-function", "poolmgr-go-default-516098-5bdbf8c8f5-g8gvc"),
                 id="api-server-fission"),
    # Trap: k8saudit names the pod with ka.target.*, not k8s.*.
    pytest.param("falco_k8saudit_AttachExecPod_default-kubecon.json", "Attach/Exec Pod",
                 Severity.low, pod("default", "kubecon"), id="k8saudit-eks"),
    pytest.param("falco_k8saudit_AttachExecPod_hello-app-nginx.json", "Attach/Exec Pod",
                 Severity.low, pod("hello-app", "nginx-676b6c5bbc-4xc6t"), id="k8saudit-ovh"),
    # Trap: k8s fields are JSON null (and <NA> in the output): no target.
    pytest.param("falco_WriteBelowEtc_null-k8s-fields_falco-issue-1910.json", "Write below etc",
                 Severity.high, None, id="null-k8s-fields"),
    # Trap: a host event has no k8s fields at all: no target.
    pytest.param("falco_WriteBelowBinaryDir_no-k8s-fields_falcosidekick-readme.json",
                 "Write below binary dir", Severity.high, None, id="host-event"),
    pytest.param("falcosidekick_unit-test_falcoTestInput.json", "Test rule", Severity.info, None,
                 id="sidekick-test-input"),
    # Go decodes keys case-insensitively, so Falco Talon's example says "Rule".
    pytest.param("falco_talon-example_TestNetworkPolicy_default-static-web.json",
                 "Test NetworkPolicy", Severity.critical, pod("default", "static-web"),
                 id="talon-capital-Rule"),
])
def test_falco_signals(fixture: str, rule: str, severity: Severity, target: Target | None) -> None:
    body = load_json(fixture)
    signal = falco_signal(body)
    assert signal.source is Source.falco
    assert signal.status is SignalStatus.firing
    assert (signal.title, signal.alert_name) == (rule, rule)
    assert signal.description == body["output"]
    assert signal.severity is severity
    assert signal.target == target
    assert signal.labels["rule"] == rule
    assert signal.labels["priority"] == body["priority"]


def test_evt_time_above_2_53_survives_exactly() -> None:
    raw = text(FALCO_DOCS)
    exact = "1685022245478445995"
    assert f'"evt.time":{exact}' in raw
    assert int(exact) > 2**53
    assert str(int(float(exact))) != exact  # what a float would have made of it
    # Both ways in: a parsed dict (the webhook) and the raw JSON bytes.
    for event in (FalcoEvent.model_validate(json.loads(raw)), FalcoEvent.model_validate_json(raw)):
        assert event.output_fields["evt.time"] == int(exact)
        assert type(event.output_fields["evt.time"]) is int
        assert signal_from_falco(event).labels["evt_time"] == exact


@pytest.mark.parametrize("fixture", sorted(
    p.name for p in PAYLOADS.glob("falco_*.json") if '"evt.time"' in p.read_text()))
def test_every_evt_time_survives_exactly(fixture: str) -> None:
    body = load_json(fixture)
    exact = str(body["output_fields"]["evt.time"])
    assert f'"evt.time":{exact}' in text(fixture)
    assert falco_signal(body).labels["evt_time"] == exact


def test_falco_labels() -> None:
    signal = falco_signal(FALCO_DOCS)
    assert signal.labels == {
        "rule": "Terminal shell in container",
        "priority": "Critical",
        "source": "syscall",
        "hostname": "falco-xczjd",
        "tags": "container,mitre_execution,shell",
        "container_id": "ee97d9c4186f",
        "container_image_repository": "docker.io/library/alpine",
        "evt_time": "1685022245478445995",
        "k8s_ns_name": "default",
        "k8s_pod_name": "kubecon",
        "proc_cmdline": "sh -c clear; (bash || ash || sh)",
        "proc_name": "sh",
        "proc_pname": "runc",
        "proc_tty": "34816",
        "user_loginuid": "-1",
        "user_name": "root",
    }


def test_k8saudit_labels_are_sanitised() -> None:
    labels = falco_signal("falco_k8saudit_AttachExecPod_default-kubecon.json").labels
    assert labels["ka_target_resource"] == "pods"
    assert labels["ka_uri_param_command_"] == "sh"   # "ka.uri.param[command]"
    assert labels["source"] == "k8s_audit"


def test_null_fields_are_not_labels() -> None:
    signal = falco_signal("falco_WriteBelowEtc_null-k8s-fields_falco-issue-1910.json")
    for null_field in ("k8s_ns_name", "k8s_pod_name", "container_image_repository", "proc_aname_2_"):
        assert null_field not in signal.labels
    assert signal.labels["container_id"] == "f36f482d44ea"


@pytest.mark.parametrize(("field", "value", "label"), [
    ("proc.tty", 34816, "34816"),
    ("user.loginuid", -1, "-1"),
    ("evt.time", 2**63 - 1, str(2**63 - 1)),
    ("fd.num", 0, "0"),
    ("evt.is_open_write", True, "true"),
    ("evt.is_open_read", False, "false"),
    ("evt.rate", 0.5, "0.5"),
    ("ka.req.pod.containers.image", ["nginx:1.25", "busybox"], "nginx:1.25,busybox"),
    ("k8s.pod.label[app.kubernetes.io/name]", "web", "web"),
    ("ka.req.pod.containers.image", ["nginx:1.25", "<NA>", None, "busybox"], "nginx:1.25,busybox"),
])
def test_field_values_become_label_text(field: str, value: Any, label: str) -> None:
    event = {"output": "x", "priority": "Notice", "rule": "r", "output_fields": {field: value}}
    labels = falco_signal(event).labels
    assert labels[label_key(field)] == label
    assert all(c.isalnum() or c == "_" for c in label_key(field))


@pytest.mark.parametrize("value", ["<NA>", None])
def test_unresolved_fields_are_not_labels(value: Any) -> None:
    event = {"output": "x", "priority": "Notice", "rule": "r",
             "output_fields": {"container.image.repository": value, "proc.name": "sh"}}
    labels = falco_signal(event).labels
    assert "container_image_repository" not in labels
    assert labels["proc_name"] == "sh"


def test_a_key_in_the_right_case_wins_over_one_in_another() -> None:
    event = FalcoEvent.model_validate({"output": "x", "priority": "Notice", "rule": "right",
                                       "Rule": "folded", "Output": "ignored"})
    assert (event.rule, event.output) == ("right", "x")


def test_a_falco_event_is_a_value() -> None:
    event = falco_signal(FALCO_DOCS)
    parsed = FalcoEvent.model_validate(load_json(FALCO_DOCS))
    assert FalcoEvent.model_validate(parsed) == parsed  # validating a parsed event again keeps it
    with pytest.raises(ValidationError):
        parsed.rule = "other"  # type: ignore[misc]
    assert event.title == parsed.rule


@pytest.mark.parametrize(("fields", "hostname"), [
    ({"k8s.ns.name": "<NA>", "k8s.pod.name": "<NA>", "container.id": "host"}, "node-1"),
    ({"k8s.ns.name": None, "k8s.pod.name": None}, "node-1"),
    ({"k8s.ns.name": "default"}, "node-1"),  # a namespace alone names no pod
    ({}, None),
])
def test_events_without_a_pod_have_no_target(fields: dict[str, Any], hostname: str | None) -> None:
    event = {"output": "x", "priority": "Warning", "rule": "r", "output_fields": fields,
             "hostname": hostname}
    assert falco_signal(event).target is None


def test_the_same_rule_on_the_same_pod_is_one_incident() -> None:
    first = load_json(FALCO_ALPINE)
    again = copy.deepcopy(first)
    again["time"] = "2021-04-10T19:30:00.000000000Z"
    again["output_fields"]["evt.time"] = 1618083000000000000
    again["output_fields"]["proc.cmdline"] = "sh -c id"
    again["output"] = "a different output line"
    assert incident_name(falco_signal(first)) == incident_name(falco_signal(again))

    other_pod = copy.deepcopy(first)
    other_pod["output_fields"]["k8s.pod.name"] = "alpine-2"
    other_rule = copy.deepcopy(first)
    other_rule["rule"] = "Write below etc"
    names = {incident_name(falco_signal(e)) for e in (first, other_pod, other_rule)}
    assert len(names) == 3


def test_fingerprint_is_rule_namespace_pod_container() -> None:
    assert falco_signal(FALCO_DOCS).fingerprint == fingerprint_of(
        "Terminal shell in container", "default", "kubecon", "ee97d9c4186f")
    # No container in a k8saudit event: the Falco instance stands in.
    assert falco_signal("falco_k8saudit_AttachExecPod_default-kubecon.json").fingerprint == \
        fingerprint_of("Attach/Exec Pod", "default", "kubecon", "falco-k8saudit-eks-96d7f6f99-vwjgc")


def test_host_events_on_two_machines_are_two_incidents() -> None:
    # Processes outside containers all have container.id "host".
    event = {"output": "x", "priority": "Error", "rule": "Write below binary dir",
             "output_fields": {"container.id": "host", "fd.name": "/bin/hack"}}
    one = falco_signal({**event, "hostname": "node-1"})
    two = falco_signal({**event, "hostname": "node-2"})
    assert one.fingerprint != two.fingerprint


@pytest.mark.parametrize(("priority", "expected"), [
    ("Emergency", Severity.critical), ("Alert", Severity.critical), ("Critical", Severity.critical),
    ("Error", Severity.high), ("Warning", Severity.medium), ("Notice", Severity.low),
    ("Informational", Severity.info), ("Info", Severity.info), ("Debug", Severity.info),
    ("critical", Severity.critical), ("informational", Severity.info), ("WARNING", Severity.medium),
])
def test_falco_priorities(priority: str, expected: Severity) -> None:
    signal = falco_signal({"output": "x", "priority": priority, "rule": "r"})
    assert signal.severity is expected


def test_unknown_falco_fields_are_accepted() -> None:
    body = load_json(FALCO_DOCS)
    body["uuid"] = "6f0c4d5e-1111-2222-3333-444455556666"
    body["output_fields"]["some.new.field"] = "v"
    assert falco_signal(body).labels["some_new_field"] == "v"


def _falco(**change: Any) -> dict[str, Any]:
    body: dict[str, Any] = load_json(FALCO_DOCS)
    for key, value in change.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


@pytest.mark.parametrize("body", [
    pytest.param(_falco(rule=None), id="rule-missing"),
    pytest.param(_falco(rule=""), id="rule-empty"),
    pytest.param(_falco(output=None), id="output-missing"),
    pytest.param(_falco(priority=None), id="priority-missing"),
    pytest.param(_falco(priority="Severe"), id="priority-unknown"),
    pytest.param(_falco(priority=4), id="priority-a-number"),
    pytest.param(_falco(output_fields=["k8s.ns.name=default"]), id="fields-a-list"),
    pytest.param(_falco(output_fields={"k8s.ns.name": {"name": "default"}}), id="field-an-object"),
    pytest.param(_falco(tags="container,shell"), id="tags-a-string"),
    pytest.param(_falco(tags=[1, 2]), id="tags-numbers"),
    pytest.param(_falco(time="13:44:05"), id="time-not-a-timestamp"),
    pytest.param(_falco(hostname=7), id="hostname-a-number"),
    pytest.param([load_json(FALCO_DOCS)], id="a-list"),
    pytest.param([list(item) for item in load_json(FALCO_DOCS).items()], id="a-list-of-pairs"),
])
def test_malformed_falco_events_are_refused(body: Any) -> None:
    with pytest.raises(ValidationError):
        FalcoEvent.model_validate(body)


# === Trivy ============================================================================


def report(name: str = NGINX_REPORT) -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(name)
    return loaded


def trivy(body: dict[str, Any], **thresholds: Any) -> Signal | None:
    return signal_from_vulnerability_report(body, TrivyThresholds(**thresholds))


def add_finding(body: dict[str, Any], cve: str, severity: str = "CRITICAL",
                fixed: str = "1.2.3") -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["report"]["vulnerabilities"].append({
        "vulnerabilityID": cve, "severity": severity, "fixedVersion": fixed,
        "installedVersion": "1.0.0", "resource": "libfoo", "score": 9.8, "links": [],
        "primaryLink": f"https://avd.aquasec.com/nvd/{cve.lower()}", "title": "", "target": ""})
    return body


def test_vulnerability_report_of_a_replicaset() -> None:
    signal = trivy(report())
    assert signal is not None
    assert signal.source is Source.trivy
    assert signal.alert_name == "VulnerableWorkload"
    assert signal.severity is Severity.critical
    # Trap: Trivy scans the ReplicaSet; reaching the Deployment is done elsewhere.
    assert signal.target == Target(kind=TargetKind.replica_set, namespace="default",
                                   name="nginx-6d4cf56db6")
    # Only CVE-2019-20367 has a fixedVersion; CVE-2018-25009 has none yet.
    assert signal.title == "1 fixable CRITICAL vulnerability in nginx (replicaset nginx-6d4cf56db6)"
    assert signal.labels == {
        "trivy_resource_kind": "ReplicaSet",
        "trivy_resource_name": "nginx-6d4cf56db6",
        "container": "nginx",
        "image": "index.docker.io/library/nginx:1.16",
        "vulnerabilities": "1",
        "top_vulnerability": "CVE-2019-20367",
    }
    assert signal.fingerprint == fingerprint_of(
        "ReplicaSet", "default", "nginx-6d4cf56db6", "nginx", "CVE-2019-20367")
    assert signal.description and "CVE-2019-20367 (CRITICAL) in libbsd0" in signal.description


def test_findings_without_a_fix_count_when_not_required() -> None:
    signal = trivy(report(), require_fix=False)
    assert signal is not None
    assert signal.title == "2 CRITICAL vulnerabilities in nginx (replicaset nginx-6d4cf56db6)"
    assert signal.labels["vulnerabilities"] == "2"
    assert signal.fingerprint == fingerprint_of(
        "ReplicaSet", "default", "nginx-6d4cf56db6", "nginx", "CVE-2018-25009", "CVE-2019-20367")


@pytest.mark.parametrize(("fixture", "thresholds", "count", "severity"), [
    (NGINX_REPORT, {}, 1, Severity.critical),
    (NGINX_REPORT, {"require_fix": False}, 2, Severity.critical),
    (NGINX_REPORT, {"min_count": 2}, None, None),
    (NGINX_REPORT, {"min_count": 2, "require_fix": False}, 2, Severity.critical),
    (NGINX_REPORT, {"min_severity": "LOW"}, 1, Severity.critical),
    # coredns: one HIGH finding listed (the summary counts more; the list is what counts)
    (COREDNS_REPORT, {}, None, None),
    (COREDNS_REPORT, {"min_severity": "HIGH"}, 1, Severity.high),
    (COREDNS_REPORT, {"min_severity": "UNKNOWN"}, 1, Severity.high),
    (COREDNS_REPORT, {"min_severity": "HIGH", "min_count": 2}, None, None),
])
def test_thresholds(fixture: str, thresholds: dict[str, Any], count: int | None,
                    severity: Severity | None) -> None:
    signal = trivy(report(fixture), **thresholds)
    if count is None:
        assert signal is None
    else:
        assert signal is not None
        assert signal.labels["vulnerabilities"] == str(count)
        assert signal.severity is severity


def test_coredns_report_names_its_replicaset() -> None:
    signal = trivy(report(COREDNS_REPORT), min_severity="HIGH")
    assert signal is not None
    assert signal.target == Target(kind=TargetKind.replica_set, namespace="kube-system",
                                   name="coredns-558bd4d5db")
    assert signal.title == "1 fixable HIGH vulnerability in coredns (replicaset coredns-558bd4d5db)"
    assert signal.labels["image"] == "k8s.gcr.io/coredns/coredns:v1.8.0"
    assert signal.time == dt.datetime(2022, 12, 8, 15, 50, 37, tzinfo=dt.UTC)


def recreated(body: dict[str, Any]) -> dict[str, Any]:
    """The report as Trivy writes it again after its TTL: a new object, same findings."""
    body = copy.deepcopy(body)
    meta = body["metadata"]
    meta["uid"] = "0d7c2a8e-5b1f-4f57-9a0e-2d7c4e9b1a11"
    meta["creationTimestamp"] = "2021-05-21T12:38:10Z"
    meta["resourceVersion"] = "987654"
    meta["generation"] = 1
    body["report"]["updateTimestamp"] = "2021-05-21T12:38:10Z"
    body["report"]["scanner"]["version"] = "0.73.0"
    body["report"]["vulnerabilities"].reverse()
    return body


@pytest.mark.parametrize("thresholds", [{}, {"require_fix": False}])
def test_a_recreated_report_keeps_its_fingerprint(thresholds: dict[str, Any]) -> None:
    before = trivy(report(), **thresholds)
    after = trivy(recreated(report()), **thresholds)
    assert before is not None and after is not None
    assert after.fingerprint == before.fingerprint
    assert incident_name(after) == incident_name(before)
    assert after.labels == before.labels


def test_a_new_cve_is_a_new_fingerprint() -> None:
    before = trivy(report())
    after = trivy(add_finding(recreated(report()), "CVE-2024-0001"))
    assert before is not None and after is not None
    assert after.fingerprint != before.fingerprint
    assert after.labels["vulnerabilities"] == "2"


def test_a_finding_below_the_thresholds_changes_nothing() -> None:
    before = trivy(report())
    with_low = trivy(add_finding(report(), "CVE-2024-0002", severity="LOW"))
    without_fix = trivy(add_finding(report(), "CVE-2024-0003", fixed=""))
    assert before is not None and with_low is not None and without_fix is not None
    assert before.fingerprint == with_low.fingerprint == without_fix.fingerprint


def test_mixed_severities_are_tallied_and_the_worst_is_on_top() -> None:
    body = add_finding(report(), "CVE-2024-0004", severity="HIGH")
    body = add_finding(body, "CVE-2024-0005", severity="HIGH")
    signal = trivy(body, min_severity="HIGH")
    assert signal is not None
    assert signal.title == ("3 fixable vulnerabilities (1 CRITICAL, 2 HIGH) in nginx "
                            "(replicaset nginx-6d4cf56db6)")
    assert signal.severity is Severity.critical
    assert signal.labels["top_vulnerability"] == "CVE-2019-20367"


def test_only_high_findings_make_a_high_signal() -> None:
    body = report()
    body["report"]["vulnerabilities"] = []
    signal = trivy(add_finding(body, "CVE-2024-0006", severity="HIGH"), min_severity="MEDIUM")
    assert signal is not None
    assert signal.severity is Severity.high
    assert signal.title.startswith("1 fixable HIGH vulnerability in nginx")


def test_hashed_resource_name_comes_from_the_annotation() -> None:
    body = report(HASHED_REPORT)
    assert "trivy-operator.resource.name" not in body["metadata"]["labels"]
    signal = trivy(body)
    assert signal is not None
    long_name = "nginx-with-a-deliberately-long-name-that-exceeds-the-label-limit-6d4cf56db6"
    assert signal.target == Target(kind=TargetKind.replica_set, namespace="default", name=long_name)
    assert signal.labels["trivy_resource_name"] == long_name
    assert signal.title == f"1 fixable CRITICAL vulnerability in nginx (replicaset {long_name})"


def test_hashed_name_without_the_annotation_falls_back_to_the_owner() -> None:
    body = report(HASHED_REPORT)
    del body["metadata"]["annotations"]
    signal = trivy(body)
    assert signal is not None and signal.target is not None
    assert signal.target.name.startswith("nginx-with-a-deliberately-long-name")


def test_a_kind_firebreak_cannot_act_on_has_no_target() -> None:
    body = report()
    body["metadata"]["labels"]["trivy-operator.resource.kind"] = "CronJob"
    body["metadata"]["labels"]["trivy-operator.resource.name"] = "nightly"
    signal = trivy(body)
    assert signal is not None
    assert signal.target is None
    assert signal.labels["trivy_resource_kind"] == "CronJob"
    assert signal.title.endswith("(cronjob nightly)")


def test_image_by_digest() -> None:
    body = report()
    body["report"]["artifact"] = {"repository": "library/nginx", "digest": "sha256:abc"}
    signal = trivy(body)
    assert signal is not None
    assert signal.labels["image"] == "index.docker.io/library/nginx@sha256:abc"


def _report(change: Any) -> dict[str, Any]:
    body = report()
    change(body)
    return body


def _set_vuln(key: str, value: Any) -> Any:
    return lambda body: body["report"]["vulnerabilities"][0].__setitem__(key, value)


@pytest.mark.parametrize("body", [
    pytest.param(load_yaml("trivy_ConfigAuditReport_replicaset-nginx-6d4cf56db6_docs.yaml"),
                 id="a-config-audit-report"),
    pytest.param(_report(lambda b: b.__setitem__("apiVersion", "aquasecurity.github.io/v1")),
                 id="wrong-version"),
    pytest.param(_report(lambda b: b.__delitem__("report")), id="report-missing"),
    pytest.param(_report(lambda b: b.__delitem__("metadata")), id="metadata-missing"),
    pytest.param(_report(lambda b: b["report"].__setitem__("vulnerabilities", {"a": 1})),
                 id="vulnerabilities-not-a-list"),
    pytest.param(_report(_set_vuln("severity", "SEVERE")), id="severity-unknown"),
    pytest.param(_report(_set_vuln("severity", "critical")), id="severity-lower-case"),
    pytest.param(_report(lambda b: b["report"]["vulnerabilities"][0].__delitem__("vulnerabilityID")),
                 id="id-missing"),
    pytest.param(_report(lambda b: b["metadata"].__setitem__("labels", ["a=b"])), id="labels-a-list"),
])
def test_malformed_reports_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        signal_from_vulnerability_report(body, TrivyThresholds())


@pytest.mark.parametrize("thresholds", [
    {"min_severity": "SEVERE"},
    {"min_severity": "critical"},
    {"min_count": 0},
    {"require_fix": "sometimes"},
    {"minSeverity": "HIGH"},
])
def test_bad_thresholds_are_refused(thresholds: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TrivyThresholds.model_validate(thresholds)


def test_default_thresholds() -> None:
    assert TrivyThresholds() == TrivyThresholds(min_severity="CRITICAL", require_fix=True, min_count=1)
    assert signal_from_vulnerability_report(report()) == trivy(report())


def with_findings(*findings: dict[str, Any], body: dict[str, Any] | None = None) -> dict[str, Any]:
    """The nginx report with exactly these findings (each fixable unless it says otherwise)."""
    body = copy.deepcopy(body or report())
    body["report"]["vulnerabilities"] = [
        {"vulnerabilityID": f"CVE-2024-{i:04d}", "severity": "CRITICAL", "fixedVersion": "2.0",
         "installedVersion": "1.0", "resource": "libfoo", **finding}
        for i, finding in enumerate(findings, start=1)]
    return body


ONE_OF_EACH = with_findings(*({"severity": s} for s in ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")))


@pytest.mark.parametrize(("min_severity", "count"), [
    ("CRITICAL", 1), ("HIGH", 2), ("MEDIUM", 3), ("LOW", 4), ("UNKNOWN", 5),
])
def test_each_severity_counts_at_its_own_rank(min_severity: str, count: int) -> None:
    signal = trivy(ONE_OF_EACH, min_severity=min_severity)
    assert signal is not None
    assert signal.labels["vulnerabilities"] == str(count)


@pytest.mark.parametrize(("severity", "expected"), [
    ("CRITICAL", Severity.critical), ("HIGH", Severity.high), ("MEDIUM", Severity.medium),
    ("LOW", Severity.low), ("UNKNOWN", Severity.info),
])
def test_the_worst_finding_sets_the_severity(severity: str, expected: Severity) -> None:
    signal = trivy(with_findings({"severity": severity}, {"severity": "UNKNOWN"}), min_severity="UNKNOWN")
    assert signal is not None
    assert signal.severity is expected


@pytest.mark.parametrize(("findings", "top"), [
    pytest.param([{"severity": "HIGH", "score": 9.9}, {"severity": "CRITICAL", "score": 1.0}],
                 "CVE-2024-0002", id="severity-first"),
    pytest.param([{"score": 5.0}, {"score": 7.5}], "CVE-2024-0002", id="then-the-higher-score"),
    pytest.param([{"score": None}, {"score": 0.5}], "CVE-2024-0002", id="no-score-counts-as-zero"),
    pytest.param([{"score": 5.0}, {"score": 5.0}], "CVE-2024-0001", id="then-the-lower-id"),
    pytest.param([{}, {}], "CVE-2024-0001", id="no-scores-then-the-lower-id"),
])
def test_the_top_finding(findings: list[dict[str, Any]], top: str) -> None:
    for order in (findings, list(reversed(findings))):
        body = with_findings(*findings)
        if order is not findings:
            body["report"]["vulnerabilities"].reverse()
        signal = trivy(body, min_severity="HIGH")
        assert signal is not None
        assert signal.labels["top_vulnerability"] == top


@pytest.mark.parametrize(("artifact", "registry", "image"), [
    ({"repository": "library/nginx", "tag": "1.16"}, {"server": "index.docker.io"},
     "index.docker.io/library/nginx:1.16"),
    ({"repository": "library/nginx", "tag": "1.16", "digest": "sha256:abc"}, {"server": "r.io"},
     "r.io/library/nginx:1.16"),  # the tag is what a person recognises
    ({"repository": "library/nginx", "digest": "sha256:abc"}, None, "library/nginx@sha256:abc"),
    ({"repository": "library/nginx"}, {"server": ""}, "library/nginx"),
    ({"repository": "library/nginx"}, {}, "library/nginx"),
    ({"tag": "1.16"}, {"server": "r.io"}, None),
    ({"repository": "", "tag": "1.16"}, {"server": "r.io"}, None),
    (None, {"server": "r.io"}, None),
])
def test_image_name(artifact: dict[str, str] | None, registry: dict[str, str] | None,
                    image: str | None) -> None:
    body = report()
    body["report"]["artifact"] = artifact
    body["report"]["registry"] = registry
    signal = trivy(body)
    assert signal is not None
    assert signal.labels.get("image") == image
    assert signal.description is not None
    assert signal.description.startswith(f"Image: {image}\n") is (image is not None)
    assert "Image:" not in signal.description.split("\n", 1)[-1]


def test_without_a_container_the_title_names_the_image_then_the_workload() -> None:
    body = report()
    del body["metadata"]["labels"]["trivy-operator.container.name"]
    signal = trivy(body)
    assert signal is not None and "container" not in signal.labels
    assert signal.title == ("1 fixable CRITICAL vulnerability in index.docker.io/library/nginx:1.16 "
                            "(replicaset nginx-6d4cf56db6)")
    body["report"]["artifact"] = None
    signal = trivy(body)
    assert signal is not None
    assert signal.title == ("1 fixable CRITICAL vulnerability in replicaset nginx-6d4cf56db6 "
                            "(replicaset nginx-6d4cf56db6)")


@pytest.mark.parametrize(("count", "listed", "more"), [
    (1, 1, None), (20, 20, None), (21, 20, "... and 1 more"), (25, 20, "... and 5 more"),
])
def test_the_description_lists_twenty_findings(count: int, listed: int, more: str | None) -> None:
    signal = trivy(with_findings(*({} for _ in range(count))))
    assert signal is not None and signal.description is not None
    lines = signal.description.split("\n")
    assert lines[0] == "Image: index.docker.io/library/nginx:1.16"
    findings = [line for line in lines if line.startswith("CVE-")]
    assert findings[0] == "CVE-2024-0001 (CRITICAL) in libfoo 1.0, fixed in 2.0"
    assert len(findings) == listed
    assert lines[1:] == [*findings, *([more] if more else [])]
    assert signal.labels["vulnerabilities"] == str(count)


@pytest.mark.parametrize(("finding", "line"), [
    ({"fixedVersion": "", "resource": "", "installedVersion": ""},
     "CVE-2024-0001 (CRITICAL) in ?, no fix yet"),
    ({"fixedVersion": None, "resource": None, "installedVersion": None},
     "CVE-2024-0001 (CRITICAL) in ?, no fix yet"),
    ({"fixedVersion": "", "resource": "openssl", "installedVersion": "3.0.1"},
     "CVE-2024-0001 (CRITICAL) in openssl 3.0.1, no fix yet"),
])
def test_a_finding_without_a_fix_is_described_so(finding: dict[str, Any], line: str) -> None:
    signal = trivy(with_findings(finding), require_fix=False)
    assert signal is not None and signal.description is not None
    assert signal.description.split("\n")[1] == line
    assert signal.title == "1 CRITICAL vulnerability in nginx (replicaset nginx-6d4cf56db6)"


def test_a_finding_with_only_an_id_and_a_severity() -> None:
    body = with_findings({})
    for key in ("fixedVersion", "installedVersion", "resource"):
        del body["report"]["vulnerabilities"][0][key]
    assert trivy(body) is None  # not fixable
    signal = trivy(body, require_fix=False)
    assert signal is not None and signal.description is not None
    assert signal.description.split("\n")[1] == "CVE-2024-0001 (CRITICAL) in ?, no fix yet"


def test_a_one_character_id_is_an_id() -> None:
    signal = trivy(with_findings({"vulnerabilityID": "X"}))
    assert signal is not None and signal.labels["top_vulnerability"] == "X"


def meta(body: dict[str, Any], labels: dict[str, str | None], **fields: Any) -> dict[str, Any]:
    """The report with these labels replaced (None removes one) and metadata fields set."""
    body = copy.deepcopy(body)
    for key, value in labels.items():
        if value is None:
            body["metadata"]["labels"].pop(key, None)
        else:
            body["metadata"]["labels"][key] = value
    for key, value in fields.items():
        if value is None:
            body["metadata"].pop(key, None)
        else:
            body["metadata"][key] = value
    return body


KIND, NAME, NAMESPACE = ("trivy-operator.resource.kind", "trivy-operator.resource.name",
                         "trivy-operator.resource.namespace")
RS = Target(kind=TargetKind.replica_set, namespace="default", name="nginx-6d4cf56db6")


@pytest.mark.parametrize(("labels", "fields", "target", "subject"), [
    pytest.param({}, {}, RS, "replicaset nginx-6d4cf56db6", id="labels"),
    pytest.param({NAMESPACE: None}, {}, RS, "replicaset nginx-6d4cf56db6", id="namespace-of-the-report"),
    pytest.param({NAMESPACE: "default"}, {}, RS, "replicaset nginx-6d4cf56db6",
                 id="namespace-label-agrees"),
    # A namespaced report speaks only for its own namespace (see the hostile variants).
    pytest.param({NAMESPACE: "shop"}, {}, None, "replicaset nginx-6d4cf56db6",
                 id="namespace-label-of-another-namespace"),
    pytest.param({NAMESPACE: "shop"}, {"namespace": None},
                 Target(kind=TargetKind.replica_set, namespace="shop", name="nginx-6d4cf56db6"),
                 "replicaset nginx-6d4cf56db6", id="namespace-label-of-a-report-without-one"),
    pytest.param({NAMESPACE: None}, {"namespace": None}, None, "replicaset nginx-6d4cf56db6",
                 id="no-namespace-no-target"),
    pytest.param({KIND: "Node", NAME: "worker-1", NAMESPACE: None}, {"namespace": None},
                 Target(kind=TargetKind.node, name="worker-1"), "node worker-1", id="node"),
    pytest.param({KIND: None}, {}, RS, "replicaset nginx-6d4cf56db6", id="kind-of-the-owner"),
    pytest.param({KIND: None}, {"ownerReferences": []}, None, "workload nginx-6d4cf56db6",
                 id="no-kind"),
    pytest.param({NAME: None}, {}, RS, "replicaset nginx-6d4cf56db6", id="name-of-the-owner"),
    pytest.param({NAME: None}, {"annotations": {NAME: "nginx-from-annotation"}},
                 Target(kind=TargetKind.replica_set, namespace="default", name="nginx-from-annotation"),
                 "replicaset nginx-from-annotation", id="name-annotation-before-the-owner"),
    pytest.param({NAME: None, KIND: "Deployment"}, {}, None,
                 "deployment replicaset-nginx-6d4cf56db6-nginx", id="owner-of-another-kind"),
])
def test_the_scanned_workload(labels: dict[str, str | None], fields: dict[str, Any],
                              target: Target | None, subject: str) -> None:
    signal = trivy(meta(report(), labels, **fields))
    assert signal is not None
    assert signal.target == target
    assert signal.title.endswith(f"({subject})")
    kind, name = subject.split(" ")
    assert signal.labels.get("trivy_resource_kind", "workload").lower() == kind
    assert signal.labels.get("trivy_resource_name", "replicaset-nginx-6d4cf56db6-nginx") == name


def test_a_report_is_built_by_field_name_or_parsed_from_the_wire() -> None:
    body = report()
    parsed = VulnerabilityReport.model_validate(body)
    built = VulnerabilityReport(api_version=body["apiVersion"], kind=body["kind"],
                                metadata=body["metadata"], report=body["report"])
    assert built == parsed
    with pytest.raises(ValidationError):
        parsed.kind = "ConfigAuditReport"  # type: ignore[misc]
    thresholds = TrivyThresholds()
    with pytest.raises(ValidationError):
        thresholds.min_count = 5  # type: ignore[misc]


# === Prometheus =======================================================================

CRASHLOOP = {
    "__name__": "ALERTS", "alertname": "KubePodCrashLooping", "alertstate": "firing",
    "container": "busybox-3jb7u6", "instance": "10.233.71.230:8080", "job": "kube-state-metrics",
    "namespace": "pp1", "pod": "dd1-0", "severity": "critical",
}
KUBELET_DOWN = {"__name__": "ALERTS", "alertname": "KubeletDown", "alertstate": "firing",
                "severity": "critical"}


def series(metric: dict[str, str], ts: float = 1700000000.123, value: str = "1") -> dict[str, Any]:
    return {"metric": metric, "value": [ts, value]}


def test_alerts_query_gives_one_signal_per_series() -> None:
    signals = signals_from_alerts_query([series(CRASHLOOP), series(KUBELET_DOWN)])
    assert len(signals) == 2
    crash, kubelet = signals
    assert crash.source is Source.prometheus
    assert crash.status is SignalStatus.firing
    assert crash.alert_name == crash.title == "KubePodCrashLooping"
    assert crash.severity is Severity.critical
    assert crash.target == pod("pp1", "dd1-0")
    assert "__name__" not in crash.labels and "alertstate" not in crash.labels
    assert crash.labels["alertname"] == "KubePodCrashLooping"
    assert crash.fingerprint == labels_fingerprint(
        {k: v for k, v in CRASHLOOP.items() if k not in ("__name__", "alertstate")})
    assert crash.time == dt.datetime.fromtimestamp(1700000000.123, tz=dt.UTC)
    assert kubelet.target is None


def test_the_same_series_on_the_next_poll_is_the_same_incident() -> None:
    [first] = signals_from_alerts_query([series(CRASHLOOP)])
    reordered = dict(reversed(list(CRASHLOOP.items())))
    [second] = signals_from_alerts_query([series(reordered, ts=1700000060.0)])
    assert first.fingerprint == second.fingerprint
    assert incident_name(first) == incident_name(second)


def test_workload_labels_win_over_the_exporter_pod() -> None:
    metric = {**CRASHLOOP, "alertname": "KubeDeploymentReplicasMismatch", "deployment": "nginx",
              "namespace": "default", "pod": "kube-state-metrics-7c6f4866fc-rclv2"}
    [signal] = signals_from_alerts_query([series(metric)])
    assert signal.target == Target(kind=TargetKind.deployment, namespace="default", name="nginx")


def test_pending_alerts_are_not_signals() -> None:
    pending = {**CRASHLOOP, "alertstate": "pending"}
    assert signals_from_alerts_query([series(pending)]) == []
    assert signals_from_alerts_query([]) == []


@pytest.mark.parametrize(("metric", "alert_name"), [
    ({"__name__": "up", "job": "node-exporter", "instance": "worker-1:9100"}, "up"),
    ({"job": "node-exporter", "instance": "worker-1:9100"}, "PrometheusQuery"),
    ({"alertname": "Custom", "job": "node-exporter", "instance": "worker-1:9100"}, "Custom"),
])
def test_other_queries(metric: dict[str, str], alert_name: str) -> None:
    [signal] = signals_from_alerts_query([series(metric, value="0")])
    assert signal.alert_name == signal.title == alert_name
    assert signal.severity is Severity.medium
    assert signal.target == Target(kind=TargetKind.node, name="worker-1")
    assert "__name__" not in signal.labels


def test_two_queries_with_the_same_labels_are_two_incidents() -> None:
    labels = {"namespace": "shop", "pod": "web-1"}
    [errors] = signals_from_alerts_query([series({"__name__": "http_errors", **labels})])
    [latency] = signals_from_alerts_query([series({"__name__": "http_latency", **labels})])
    assert errors.fingerprint != latency.fingerprint
    # The series name joins the labels as `__name__`, as Prometheus itself writes it.
    assert errors.fingerprint == labels_fingerprint({"__name__": "http_errors", **labels})


@pytest.mark.parametrize("result", [
    pytest.param([{"value": [1700000000.0, "1"]}], id="metric-missing"),
    pytest.param([{"metric": CRASHLOOP}], id="value-missing"),
    pytest.param([{"metric": {"severity": 1}, "value": [1700000000.0, "1"]}], id="label-not-a-string"),
    pytest.param([{"metric": CRASHLOOP, "value": [1700000000.0]}], id="value-not-a-pair"),
    pytest.param([{"metric": CRASHLOOP, "value": ["now", "1"]}], id="timestamp-not-a-number"),
    pytest.param(["ALERTS"], id="not-an-object"),
])
def test_malformed_query_results_are_refused(result: list[Any]) -> None:
    with pytest.raises(ValidationError):
        signals_from_alerts_query(result)


# --- ExposedSecretReport ---------------------------------------------------------------

# What a report's ``match`` could hold when Trivy's masking misses a format; it must
# never reach a signal.
LEAKED = "sk_live_51HhQ2pLeakedValueThatMustNeverBeStored"


def secrets(body: dict[str, Any], **thresholds: Any) -> Signal | None:
    return signal_from_exposed_secret_report(body, TrivyThresholds(**thresholds))


def add_secret(body: dict[str, Any], rule: str, severity: str = "CRITICAL",
               target: str = "/root/.aws/credentials", category: str = "AWS",
               match: str = LEAKED) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["report"]["secrets"].append({"ruleID": rule, "severity": severity, "target": target,
                                      "category": category, "title": category, "match": match})
    return body


def test_exposed_secret_report_of_a_replicaset() -> None:
    signal = secrets(report(SECRET_REPORT))
    assert signal is not None
    assert signal.source is Source.trivy
    assert signal.alert_name == "ExposedSecret"
    assert signal.severity is Severity.high
    assert signal.target == Target(kind=TargetKind.replica_set, namespace="default",
                                   name="app-67b77f5965")
    # Two matching lines of one rule in one file: one secret to rotate.
    assert signal.title == "1 exposed secret (Stripe) in app (replicaset app-67b77f5965)"
    assert signal.labels == {
        "trivy_resource_kind": "ReplicaSet",
        "trivy_resource_name": "app-67b77f5965",
        "trivy_report": "ExposedSecretReport",
        "container": "app",
        "image": "index.docker.io/myimagewithsecret:v0.18.0-rc",
        "secrets": "1",
        "top_rule": "stripe-access-token",
        "secret_category": "Stripe",
        "rule/stripe-access-token": "HIGH",
    }
    assert signal.description is not None
    assert "stripe-access-token (HIGH, Stripe) in /app/config/secret.yaml" in signal.description
    assert signal.description.split("\n")[-1] == (
        "Rotate the credential: removing it from the image does not revoke it.")
    assert signal.time == dt.datetime(2022, 6, 29, 14, 29, 37, tzinfo=dt.UTC)
    assert signal.fingerprint == fingerprint_of(
        "ExposedSecretReport", "ReplicaSet", "default", "app-67b77f5965", "app",
        "stripe-access-token@/app/config/secret.yaml")


def test_a_secrets_value_never_enters_the_signal() -> None:
    body = add_secret(report(SECRET_REPORT), "aws-secret-access-key")
    body["report"]["secrets"][0]["match"] = f"secret_key: {LEAKED}"
    signal = secrets(body)
    assert signal is not None and signal.labels["top_rule"] == "aws-secret-access-key"
    dumped = signal.model_dump_json()
    assert LEAKED not in dumped
    assert "publishable_key" not in dumped and "*****" not in dumped


@pytest.mark.parametrize(("thresholds", "severity", "expected"), [
    ({}, "MEDIUM", None),
    ({}, "HIGH", Severity.high),
    ({"secret_min_severity": "CRITICAL"}, "HIGH", None),
    ({"secret_min_severity": "LOW"}, "LOW", Severity.low),
])
def test_secret_thresholds(thresholds: dict[str, Any], severity: str,
                           expected: Severity | None) -> None:
    body = report(SECRET_REPORT)
    for found in body["report"]["secrets"]:
        found["severity"] = severity
    signal = secrets(body, **thresholds)
    assert (signal.severity if signal else None) is expected


def test_secret_thresholds_are_not_the_vulnerability_ones() -> None:
    # The vulnerability floor (CRITICAL) does not hide a HIGH secret.
    assert secrets(report(SECRET_REPORT), min_severity="CRITICAL") is not None


def test_a_report_with_no_secrets_raises_nothing() -> None:
    body = report(SECRET_REPORT)
    body["report"]["secrets"] = None
    assert secrets(body) is None


def test_a_recreated_secret_report_keeps_its_fingerprint() -> None:
    before = secrets(report(SECRET_REPORT))
    again = report(SECRET_REPORT)
    again["metadata"].update(uid="0d7c2a8e-5b1f-4f57-9a0e-2d7c4e9b1a11",
                             creationTimestamp="2022-06-30T14:25:54Z", resourceVersion="9")
    again["report"]["updateTimestamp"] = "2022-06-30T14:29:37Z"
    again["report"]["secrets"].reverse()
    after = secrets(again)
    assert before is not None and after is not None
    assert after.fingerprint == before.fingerprint
    assert incident_name(after) == incident_name(before)


def test_a_new_secret_is_a_new_fingerprint_and_the_worst_is_on_top() -> None:
    before = secrets(report(SECRET_REPORT))
    after = secrets(add_secret(report(SECRET_REPORT), "aws-access-key-id"))
    assert before is not None and after is not None
    assert after.fingerprint != before.fingerprint
    assert after.severity is Severity.critical
    assert after.labels["secrets"] == "2"
    assert after.title == "2 exposed secrets (AWS) in app (replicaset app-67b77f5965)"


def test_the_same_rule_in_another_file_is_another_secret() -> None:
    body = add_secret(report(SECRET_REPORT), "stripe-access-token", severity="HIGH",
                      target="/app/.env", category="Stripe")
    signal = secrets(body)
    assert signal is not None and signal.labels["secrets"] == "2"


def test_secret_and_vulnerability_fingerprints_differ_for_one_workload() -> None:
    vulnerable = trivy(report())
    body = report(SECRET_REPORT)
    body["metadata"]["labels"].update({"trivy-operator.resource.name": "nginx-6d4cf56db6",
                                       "trivy-operator.container.name": "nginx"})
    exposed = secrets(body)
    assert vulnerable is not None and exposed is not None
    assert incident_name(vulnerable) != incident_name(exposed)


@pytest.mark.parametrize("hostile", [
    {"ruleID": "", "severity": "HIGH"},
    {"ruleID": "x", "severity": "SEVERE"},
    {"severity": "HIGH", "match": "AKIA-LEAK"},  # short: pydantic would quote it whole
    {"ruleID": "x", "severity": "SEVERE", "match": "AKIA-LEAK"},
])
def test_a_malformed_secret_is_refused_without_echoing_its_value(
        hostile: dict[str, Any]) -> None:
    body = report(SECRET_REPORT)
    body["report"]["secrets"].append(hostile)
    with pytest.raises(ValidationError) as refused:
        secrets(body)
    assert "AKIA-LEAK" not in str(refused.value)


def test_a_hostile_secret_report_is_bounded() -> None:
    body = add_secret(report(SECRET_REPORT), "x" * 5000, target="/" + "a" * 20000,
                      category="\ud800" * 10)
    signal = secrets(body)
    assert signal is not None
    assert len(signal.description or "") <= 8192
    assert "\ud800" not in signal.model_dump_json()


# --- ConfigAuditReport -----------------------------------------------------------------


def audit(body: dict[str, Any], **thresholds: Any) -> Signal | None:
    return signal_from_config_audit_report(body, TrivyThresholds(**thresholds))


def test_config_audit_report_of_a_replicaset() -> None:
    signal = audit(report(AUDIT_REPORT))
    assert signal is not None
    assert signal.alert_name == "MisconfiguredWorkload"
    assert signal.severity is Severity.critical
    assert signal.target == Target(kind=TargetKind.replica_set, namespace="default",
                                   name="nginx-6d4cf56db6")
    # hostPIDSet and hostIPCSet are CRITICAL but passed; only one CRITICAL check failed.
    assert signal.title == ("1 failed CRITICAL configuration check (privilegeEscalationAllowed) "
                            "in replicaset nginx-6d4cf56db6")
    assert signal.labels == {
        "trivy_resource_kind": "ReplicaSet",
        "trivy_resource_name": "nginx-6d4cf56db6",
        "trivy_report": "ConfigAuditReport",
        "failed_checks": "1",
        "top_check": "privilegeEscalationAllowed",
        "check/privilegeEscalationAllowed": "CRITICAL",
    }
    assert signal.description == ("privilegeEscalationAllowed (CRITICAL) in container nginx: "
                                  "Privilege escalation should not be allowed")
    assert signal.fingerprint == fingerprint_of(
        "ConfigAuditReport", "ReplicaSet", "default", "nginx-6d4cf56db6",
        "privilegeEscalationAllowed@nginx")


@pytest.mark.parametrize(("thresholds", "count"), [
    ({}, 1),
    ({"config_min_severity": "LOW"}, 2),  # notReadOnlyRootFilesystem (LOW) failed too
    ({"min_severity": "LOW"}, 1),  # the vulnerability floor is not the config floor
])
def test_config_thresholds(thresholds: dict[str, Any], count: int) -> None:
    signal = audit(report(AUDIT_REPORT), **thresholds)
    assert signal is not None and signal.labels["failed_checks"] == str(count)


def test_passing_checks_raise_nothing() -> None:
    body = report(AUDIT_REPORT)
    for check in body["report"]["checks"]:
        check["success"] = True
    assert audit(body, config_min_severity="UNKNOWN") is None


def test_a_recreated_audit_report_keeps_its_fingerprint_and_a_new_failure_changes_it() -> None:
    before = audit(report(AUDIT_REPORT))
    again = report(AUDIT_REPORT)
    again["metadata"]["uid"] = "0d7c2a8e-5b1f-4f57-9a0e-2d7c4e9b1a11"
    again["report"]["updateTimestamp"] = "2021-05-21T12:38:10Z"
    again["report"]["checks"].reverse()
    after = audit(again)
    worse = report(AUDIT_REPORT)
    worse["report"]["checks"][0]["success"] = False  # hostPIDSet, CRITICAL
    assert before is not None and after is not None
    assert after.fingerprint == before.fingerprint
    changed = audit(worse)
    assert changed is not None and changed.fingerprint != before.fingerprint
    assert changed.labels["failed_checks"] == "2"


def test_one_check_failing_in_two_containers_counts_twice() -> None:
    body = report(AUDIT_REPORT)
    failing = copy.deepcopy(body["report"]["checks"][-1])
    failing["scope"]["value"] = "sidecar"
    body["report"]["checks"].append(failing)
    signal = audit(body)
    assert signal is not None and signal.labels["failed_checks"] == "2"
    assert signal.description is not None and "in container sidecar" in signal.description


@pytest.mark.parametrize("hostile", [
    {"checkID": "x", "severity": "CRITICAL"},  # no success: unknown is not a pass
    {"checkID": "x", "severity": "CRITICAL", "success": "maybe"},
    {"severity": "CRITICAL", "success": False},
])
def test_a_malformed_check_is_refused(hostile: dict[str, Any]) -> None:
    body = report(AUDIT_REPORT)
    body["report"]["checks"].append(hostile)
    with pytest.raises(ValidationError):
        audit(body)


def test_each_reader_refuses_the_other_kinds() -> None:
    with pytest.raises(ValidationError):
        audit(report(SECRET_REPORT))
    with pytest.raises(ValidationError):
        secrets(report(AUDIT_REPORT))
    with pytest.raises(ValidationError):
        trivy(report(AUDIT_REPORT))


# --- What a playbook can tell apart: a label per rule and per check ---------------------


def test_each_rule_found_is_a_label_holding_its_worst_severity() -> None:
    body = add_secret(report(SECRET_REPORT), "aws-access-key-id", severity="HIGH", target="/a")
    body = add_secret(body, "aws-access-key-id", severity="CRITICAL", target="/b")
    signal = secrets(body)
    assert signal is not None
    assert {k: v for k, v in signal.labels.items() if k.startswith("rule/")} == {
        "rule/aws-access-key-id": "CRITICAL", "rule/stripe-access-token": "HIGH"}
    assert signal.labels["secrets"] == "3"  # one rule in two files is two secrets


def test_each_failed_check_is_a_label_and_a_passed_one_is_not() -> None:
    body = report(AUDIT_REPORT)
    signal = audit(body, config_min_severity="LOW")
    assert signal is not None
    assert {k: v for k, v in signal.labels.items() if k.startswith("check/")} == {
        "check/privilegeEscalationAllowed": "CRITICAL", "check/notReadOnlyRootFilesystem": "LOW"}


def many_rules(count: int) -> dict[str, Any]:
    """The secret sample with ``count`` HIGH rules, then one CRITICAL rule last by name."""
    body = report(SECRET_REPORT)
    body["report"]["secrets"] = []
    for i in range(count):
        body = add_secret(body, f"rule-{i:02d}", severity="HIGH")
    return add_secret(body, "zz-worst", severity="CRITICAL")


@pytest.mark.parametrize(("count", "labelled"), [(28, 29), (29, 30), (30, 30), (45, 30)])
def test_at_most_thirty_rules_are_labels_the_worst_first(count: int, labelled: int) -> None:
    signal = secrets(many_rules(count))
    assert signal is not None
    rules = [key for key in signal.labels if key.startswith("rule/")]
    assert len(rules) == labelled
    assert "rule/zz-worst" in rules and "rule/rule-00" in rules
    assert signal.labels["secrets"] == str(count + 1)
    assert signal.labels["top_rule"] == "zz-worst"
    assert signal.labels["trivy_report"] == "ExposedSecretReport"  # never crowded out


def test_many_failed_checks_are_counted_described_twenty_and_labelled_thirty() -> None:
    body = report(AUDIT_REPORT)
    body["report"]["checks"] = [
        {"checkID": f"KSV{i:03d}", "severity": "CRITICAL", "success": False,
         "title": f"check {i}", "messages": None, "category": None, "scope": None}
        for i in range(45)]
    signal = audit(body)
    assert signal is not None and signal.description is not None
    lines = signal.description.split("\n")
    assert lines[0] == "KSV000 (CRITICAL): check 0"
    assert lines[20:] == ["... and 25 more"]
    assert signal.labels["failed_checks"] == "45"
    assert len([key for key in signal.labels if key.startswith("check/")]) == 30
    assert signal.title == "45 failed CRITICAL configuration checks (KSV000) in replicaset nginx-6d4cf56db6"


@pytest.mark.parametrize(("check", "line"), [
    ({"messages": ["runs privileged", "mounts /"], "title": "T"},
     "KSV017 (CRITICAL) in container app: runs privileged; mounts /"),
    ({"messages": [], "title": "Privileged container"},
     "KSV017 (CRITICAL) in container app: Privileged container"),
    ({"messages": None, "title": None}, "KSV017 (CRITICAL) in container app"),
    ({"scope": None, "title": ""}, "KSV017 (CRITICAL)"),
    ({"scope": {"type": "Container", "value": ""}}, "KSV017 (CRITICAL)"),
])
def test_a_failed_check_is_described_by_its_messages_else_its_title(
        check: dict[str, Any], line: str) -> None:
    body = report(AUDIT_REPORT)
    body["report"]["checks"] = [{"checkID": "KSV017", "severity": "CRITICAL", "success": False,
                                 "scope": {"type": "Container", "value": "app"}, **check}]
    signal = audit(body)
    assert signal is not None
    assert signal.description == line


@pytest.mark.parametrize(("secret", "line", "named"), [
    ({"category": "AWS", "target": "/app/.env"}, "r1 (CRITICAL, AWS) in /app/.env", "AWS"),
    ({"category": None, "target": None}, "r1 (CRITICAL, uncategorised) in the image", "r1"),
    ({"category": "", "title": None}, "r1 (CRITICAL, uncategorised) in /f", "r1"),
])
def test_a_secret_is_described_by_rule_category_and_file(
        secret: dict[str, Any], line: str, named: str) -> None:
    body = report(SECRET_REPORT)
    body["report"]["secrets"] = [{"ruleID": "r1", "severity": "CRITICAL", "target": "/f",
                                  "match": LEAKED, **secret}]
    signal = secrets(body)
    assert signal is not None and signal.description is not None
    assert signal.description.split("\n")[1] == line
    assert signal.title == f"1 exposed secret ({named}) in app (replicaset app-67b77f5965)"
    assert LEAKED not in signal.model_dump_json()


# --- Hostile reports -------------------------------------------------------------------

READERS = [
    pytest.param(trivy, NGINX_REPORT, id="VulnerabilityReport"),
    pytest.param(secrets, SECRET_REPORT, id="ExposedSecretReport"),
    pytest.param(audit, AUDIT_REPORT, id="ConfigAuditReport"),
]


@pytest.mark.parametrize(("read", "fixture"), READERS)
@pytest.mark.parametrize(("labels", "named"), [
    pytest.param({NAMESPACE: "payments"}, "ReplicaSet payments/{name}", id="another-namespace"),
    pytest.param({KIND: "Node", NAME: "worker-1"}, "Node worker-1", id="a-node"),
])
def test_a_report_cannot_steer_containment_out_of_its_namespace(
        read: Any, fixture: str, labels: dict[str, str], named: str) -> None:
    body = report(fixture)
    name = body["metadata"]["labels"][NAME]
    body = meta(body, labels)
    signal = read(body)
    assert signal is not None
    assert signal.target is None
    assert signal.target_problem == (
        f"the report default/{body['metadata']['name']} names {named.format(name=name)}: "
        f"a namespaced report speaks only for objects in its own namespace")
    assert signal.labels["trivy_resource_kind"] == body["metadata"]["labels"][KIND]


@pytest.mark.parametrize(("read", "fixture"), READERS)
def test_a_report_about_an_object_firebreak_cannot_act_on_is_recorded_without_a_target(
        read: Any, fixture: str) -> None:
    body = meta(report(fixture), {KIND: "Role", NAME: "reader"})
    signal = read(body)
    assert signal is not None
    assert signal.target is None and signal.target_problem is None
    assert signal.labels["trivy_resource_kind"] == "Role"
    assert "role reader" in signal.title


# Short: pydantic shortens the long input it quotes, which would hide a leak.
SHORT_LEAK = "AKIA-LEAK"


@pytest.mark.parametrize("change", [
    pytest.param(lambda b: b["report"].__setitem__("secrets", {"match": SHORT_LEAK}),
                 id="secrets-an-object"),
    pytest.param(lambda b: b["report"].__setitem__("secrets", SHORT_LEAK), id="secrets-a-string"),
    pytest.param(lambda b: b["report"]["secrets"].append(SHORT_LEAK), id="a-finding-a-string"),
    pytest.param(lambda b: b["report"]["secrets"][0].__setitem__("target", [SHORT_LEAK]),
                 id="a-file-a-list"),
    pytest.param(lambda b: b["report"]["secrets"][0].__setitem__("ruleID", {"match": SHORT_LEAK}),
                 id="a-rule-an-object"),
    pytest.param(lambda b: b.__setitem__("report", f"match: {SHORT_LEAK}"), id="report-a-string"),
])
def test_a_malformed_secret_report_is_refused_without_quoting_its_input(change: Any) -> None:
    body = report(SECRET_REPORT)
    change(body)
    with pytest.raises(ValidationError) as refused:
        secrets(body)
    message = str(refused.value)
    assert "report" in message  # where the problem is, still said
    assert SHORT_LEAK not in message and "*****" not in message


@pytest.mark.parametrize("change", [
    pytest.param(lambda b: b["report"].__setitem__("checks", {"KSV017": False}),
                 id="checks-an-object"),
    pytest.param(lambda b: b["report"]["checks"].append("KSV017"), id="a-check-a-string"),
    pytest.param(lambda b: b["report"]["checks"][0].__setitem__("messages", "privileged"),
                 id="messages-a-string"),
    pytest.param(lambda b: b["report"]["checks"][0].__setitem__("severity", "critical"),
                 id="severity-lower-case"),
    pytest.param(lambda b: b["report"]["checks"][0].__setitem__("scope", "nginx"),
                 id="scope-a-string"),
])
def test_a_malformed_config_audit_report_is_refused(change: Any) -> None:
    body = report(AUDIT_REPORT)
    change(body)
    with pytest.raises(ValidationError):
        audit(body)


def test_a_hostile_config_audit_report_is_bounded() -> None:
    body = report(AUDIT_REPORT)
    failing = body["report"]["checks"][-1]
    assert failing["checkID"] == "privilegeEscalationAllowed" and failing["success"] is False
    failing.update(checkID="K" * 5000, messages=["\ud800" + "m" * 20000] * 3,
                   scope={"type": "Container", "value": "c\ud800" * 1000})
    signal = audit(body)
    assert signal is not None
    dumped = signal.model_dump_json()
    assert "\ud800" not in dumped
    assert json_size(signal.title) <= 1024 and json_size(signal.description or "") <= 8192
    assert all(json_size(key) <= 256 and json_size(value) <= 1024
               for key, value in signal.labels.items())


# --- Edges of the secret and check readers ---------------------------------------------


def test_a_one_character_rule_or_check_is_an_id() -> None:
    body = report(SECRET_REPORT)
    body["report"]["secrets"] = [{"ruleID": "r", "severity": "HIGH"}]
    found = secrets(body)
    assert found is not None and found.labels["top_rule"] == "r"
    body = report(AUDIT_REPORT)
    body["report"]["checks"] = [{"checkID": "K", "severity": "CRITICAL", "success": False}]
    failed = audit(body)
    assert failed is not None and failed.labels["top_check"] == "K"
    assert failed.description == "K (CRITICAL)"


def test_a_secret_with_only_a_rule_and_a_severity() -> None:
    body = report(SECRET_REPORT)
    body["report"]["secrets"] = [{"ruleID": "r1", "severity": "HIGH"}]
    signal = secrets(body)
    assert signal is not None and signal.description is not None
    assert signal.description.split("\n")[1] == "r1 (HIGH, uncategorised) in the image"
    assert "secret_category" not in signal.labels


def test_a_scope_without_a_value_is_no_container() -> None:
    body = report(AUDIT_REPORT)
    body["report"]["checks"] = [{"checkID": "KSV017", "severity": "CRITICAL", "success": False,
                                 "scope": {"type": "Container"}}]
    signal = audit(body)
    assert signal is not None and signal.description == "KSV017 (CRITICAL)"
    assert signal.fingerprint == fingerprint_of(
        "ConfigAuditReport", "ReplicaSet", "default", "nginx-6d4cf56db6", "KSV017")


@pytest.mark.parametrize(("read", "fixture"), READERS)
def test_a_report_naming_no_kind_is_about_a_workload(read: Any, fixture: str) -> None:
    body = meta(report(fixture), {KIND: None}, ownerReferences=[])
    signal = read(body)
    assert signal is not None and signal.target is None
    assert f"workload {body['metadata']['labels'][NAME]}" in signal.title


@pytest.mark.parametrize("order", ["as-listed", "reversed"])
def test_one_rule_in_one_file_is_its_worst_finding_whatever_the_order(order: str) -> None:
    body = report(SECRET_REPORT)
    body["report"]["secrets"] = [
        {"ruleID": "r1", "severity": "HIGH", "target": "/f", "category": "AWS"},
        {"ruleID": "r1", "severity": "CRITICAL", "target": "/f", "category": "GCP"},
        {"ruleID": "r1", "severity": "CRITICAL", "target": "/f", "category": "Azure"},
    ]
    if order == "reversed":
        body["report"]["secrets"].reverse()
    signal = secrets(body)
    assert signal is not None
    assert signal.severity is Severity.critical
    assert signal.labels["secrets"] == "1" and signal.labels["rule/r1"] == "CRITICAL"
    assert signal.labels["secret_category"] == "GCP"  # among equals, by category


@pytest.mark.parametrize(("count", "more"), [(1, None), (20, None), (21, "... and 1 more"),
                                             (25, "... and 5 more")])
def test_the_description_lists_twenty_secrets(count: int, more: str | None) -> None:
    body = report(SECRET_REPORT)
    body["report"]["secrets"] = [{"ruleID": f"r{i:02d}", "severity": "HIGH", "target": "/f"}
                                 for i in range(count)]
    signal = secrets(body)
    assert signal is not None and signal.description is not None
    lines = signal.description.split("\n")
    assert lines[0] == "Image: index.docker.io/myimagewithsecret:v0.18.0-rc"
    assert lines[1] == "r00 (HIGH, uncategorised) in /f"
    assert lines[1 + min(count, 20):-1] == ([more] if more else [])


@pytest.mark.parametrize(("count", "more"), [(20, None), (21, "... and 1 more")])
def test_the_description_lists_twenty_failed_checks(count: int, more: str | None) -> None:
    body = report(AUDIT_REPORT)
    body["report"]["checks"] = [{"checkID": f"KSV{i:03d}", "severity": "CRITICAL",
                                 "success": False} for i in range(count)]
    signal = audit(body)
    assert signal is not None and signal.description is not None
    assert signal.description.split("\n")[20:] == ([more] if more else [])


def test_the_worst_failed_check_is_on_top() -> None:
    signal = audit(report(AUDIT_REPORT), config_min_severity="LOW")
    assert signal is not None
    assert signal.labels["top_check"] == "privilegeEscalationAllowed"
    assert signal.severity is Severity.critical
    assert signal.description is not None
    assert signal.description.split("\n")[0].startswith("privilegeEscalationAllowed (CRITICAL)")


# === POST /signals =====================================================================


def test_a_posted_signal_is_external_and_keeps_its_senders_name() -> None:
    from firebreak.sources.external import ExternalSignal, signal_from_external

    posted = ExternalSignal.model_validate({
        "source": "kube-bench", "fingerprint": "5.2.1/shop/storefront", "severity": "critical",
        "title": "Privileged container", "alertName": "5.2.1",
        "labels": {"source": "falco", "team": "payments"},
        "target": {"kind": "Deployment", "namespace": "shop", "name": "storefront"}})
    signal = signal_from_external(posted)
    assert signal.source is Source.external
    assert signal.fingerprint == "kube-bench/5.2.1/shop/storefront"
    # A sender cannot pass for another through its labels.
    assert signal.labels == {"source": "kube-bench", "team": "payments"}
    assert signal.alert_name == "5.2.1"
    assert incident_name(signal).startswith("external-5-2-1-")


def test_the_served_schema_is_the_models() -> None:
    from firebreak.sources.external import ExternalSignal, signal_schema

    schema = signal_schema()
    assert set(schema["properties"]) == {
        field.alias for field in ExternalSignal.model_fields.values()}
    assert schema["properties"]["source"]["pattern"] == r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


@pytest.mark.parametrize(("change", "accepted"), [
    ({"source": "a", "fingerprint": "x", "title": "x"}, True),  # one character is enough
    ({"source": "a" * 63}, True),
    ({"source": "a" * 64}, False),
    ({"source": ""}, False),
    ({"fingerprint": ""}, False),
    ({"title": ""}, False),
])
def test_posted_signal_bounds(change: dict[str, Any], accepted: bool) -> None:
    from firebreak.sources.external import ExternalSignal

    fields = {"source": "grype", "fingerprint": "f", "severity": "low", "title": "t", **change}
    if accepted:
        ExternalSignal.model_validate(fields)
    else:
        with pytest.raises(ValidationError):
            ExternalSignal.model_validate(fields)


def test_a_posted_signal_is_immutable_and_its_schema_titled_signal() -> None:
    from firebreak.sources.external import ExternalSignal, signal_schema

    posted = ExternalSignal.model_validate(
        {"source": "grype", "fingerprint": "f", "severity": "low", "title": "t"})
    with pytest.raises(ValidationError):
        posted.title = "changed"  # type: ignore[misc]
    assert signal_schema()["title"] == "Signal"


def test_the_readmes_table_of_posted_fields_is_the_served_schema() -> None:
    from firebreak.sources.external import signal_schema

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("| field | required | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1:3] for line in table.strip().splitlines()[1:]]
    documented = {field.strip().strip("`"): required.strip() == "yes" for field, required in rows}
    schema = signal_schema()
    assert documented == {field: field in schema["required"] for field in schema["properties"]}
