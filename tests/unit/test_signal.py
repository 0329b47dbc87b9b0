"""The shared signal helpers: fingerprints, incident names, severities and targets."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from firebreak.api import Severity, Source, Target, TargetKind
from firebreak.sources.signal import (
    Signal,
    fingerprint_of,
    incident_name,
    labels_fingerprint,
    severity_from,
    target_from_labels,
)

# A DNS-1123 label: what every incident name must be.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def signal(**overrides: object) -> Signal:
    fields: dict[str, object] = {
        "source": Source.alertmanager, "fingerprint": "bc6e3ddcbe61b398",
        "severity": Severity.medium, "title": "etcd database is fragmented",
        "alert_name": "etcdDatabaseHighFragmentationRatio",
    }
    fields.update(overrides)
    return Signal.model_validate(fields)


# --- fingerprint_of / labels_fingerprint --------------------------------------------


def test_fingerprint_is_stable_and_short() -> None:
    assert fingerprint_of("Terminal shell in container", "default", "kubecon") == \
        fingerprint_of("Terminal shell in container", "default", "kubecon")
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint_of("a"))


@pytest.mark.parametrize(("left", "right"), [
    (("a", "b"), ("b", "a")),          # order matters
    (("ab", "c"), ("a", "bc")),        # part boundaries matter
    (("rule", "ns", "pod"), ("rule", "ns", "pod", "extra")),
])
def test_fingerprint_tells_parts_apart(left: tuple[str, ...], right: tuple[str, ...]) -> None:
    assert fingerprint_of(*left) != fingerprint_of(*right)


@pytest.mark.parametrize(("fingerprint", "valid"), [("", False), ("x", True)])
def test_a_signal_needs_a_fingerprint(fingerprint: str, valid: bool) -> None:
    if valid:
        assert signal(fingerprint=fingerprint).fingerprint == fingerprint
    else:
        with pytest.raises(ValidationError):
            signal(fingerprint=fingerprint)


def test_a_signal_is_a_value() -> None:
    with pytest.raises(ValidationError):
        signal().title = "changed"  # type: ignore[misc]


def test_none_fingerprints_like_an_empty_part() -> None:
    # A field null in one delivery and absent (empty) in the next is the same alert.
    assert fingerprint_of("rule", None, "host") == fingerprint_of("rule", "", "host")


def test_labels_fingerprint_ignores_label_order() -> None:
    one = {"alertname": "KubePodCrashLooping", "namespace": "pp1", "pod": "dd1-0"}
    other = dict(reversed(list(one.items())))
    assert labels_fingerprint(one) == labels_fingerprint(other)
    assert labels_fingerprint(one) != labels_fingerprint({**one, "pod": "dd1-1"})


# --- incident_name -----------------------------------------------------------------


def test_incident_name_is_readable_and_a_dns_label() -> None:
    name = incident_name(signal())
    assert name.startswith("alertmanager-etcddatabasehighfragmentation")
    assert DNS_LABEL.fullmatch(name)


@pytest.mark.parametrize("alert_name", [
    "etcdDatabaseHighFragmentationRatio",
    "Falco internal: syscall event drop",
    "x" * 300,
    "a" * 29 + "-" * 10 + "b" * 10,       # a cut right at a separator
    "!!!",                                 # nothing readable left
    "Ünïcødé ✓ rule",
])
@pytest.mark.parametrize("source", list(Source))
def test_incident_name_is_always_a_dns_label(source: Source, alert_name: str) -> None:
    name = incident_name(signal(source=source, alert_name=alert_name))
    assert DNS_LABEL.fullmatch(name), name
    assert "--" not in name
    assert name.startswith(f"{source.value}-")


def test_incident_name_depends_on_source_and_fingerprint_only() -> None:
    base = incident_name(signal())
    # Another delivery of the same alert: new title, description, time, status.
    assert incident_name(signal(title="other words", description="x", status="resolved")) == base
    assert incident_name(signal(fingerprint="another")) != base
    assert incident_name(signal(source=Source.prometheus)) != base


def test_a_long_alert_name_fills_the_name_to_63_characters() -> None:
    name = incident_name(signal(source=Source.alertmanager, alert_name="x" * 300))
    assert len(name) == 63
    assert re.fullmatch(r"alertmanager-x{33}-[0-9a-f]{16}", name)


# Incident names are derived from fingerprints and are how a later delivery finds
# its incident: if either changed between releases, every open incident would be
# opened a second time after an upgrade. These values are therefore pinned.
def test_fingerprints_and_names_are_stable_across_releases() -> None:
    assert fingerprint_of("Terminal shell in container", "default", "kubecon", None) == "556477fbe68dbcd4"
    assert labels_fingerprint({"namespace": "pp1", "alertname": "KubePodCrashLooping"}) == \
        "329c369b84c33650"
    assert incident_name(signal(source=Source.falco, alert_name="Terminal shell in container")) == \
        "falco-terminal-shell-in-container-32ab6bc4d2b59b31"


def test_incident_name_falls_back_to_the_title() -> None:
    assert incident_name(signal(alert_name=None, title="Shell in pod")).startswith(
        "alertmanager-shell-in-pod-")


# --- severity_from -----------------------------------------------------------------


@pytest.mark.parametrize(("word", "expected"), [
    # Prometheus / Alertmanager conventions
    ("critical", Severity.critical), ("page", Severity.critical),
    ("warning", Severity.medium), ("high", Severity.high), ("info", Severity.info),
    ("none", Severity.info), ("low", Severity.low), ("minor", Severity.low),
    ("warn", Severity.medium), ("medium", Severity.medium), ("moderate", Severity.medium),
    ("major", Severity.high),
    # Falco priorities, as Falco spells them
    ("Emergency", Severity.critical), ("Alert", Severity.critical),
    ("Critical", Severity.critical), ("Error", Severity.high), ("Warning", Severity.medium),
    ("Notice", Severity.low), ("Informational", Severity.info), ("Debug", Severity.info),
    # Falcosidekick's Alertmanager severity for Notice/Informational/Debug
    ("information", Severity.info),
    # case and blanks do not matter
    ("  CRITICAL ", Severity.critical),
])
def test_severity_words(word: str, expected: Severity) -> None:
    # Against a default that differs from the answer, so a word that is not known
    # cannot pass by falling back to it.
    other = Severity.info if expected is not Severity.info else Severity.critical
    assert severity_from(word, default=other) is expected


@pytest.mark.parametrize("word", [None, "", "bogus", "sev1"])
def test_unknown_severity_is_the_default(word: str | None) -> None:
    assert severity_from(word) is Severity.medium
    assert severity_from(word, default=Severity.high) is Severity.high


# --- target_from_labels ------------------------------------------------------------

KSM = {"job": "kube-state-metrics", "instance": "10.233.71.230:8080"}


@pytest.mark.parametrize(("labels", "expected"), [
    pytest.param({"namespace": "pp1", "pod": "dd1-0"},
                 Target(kind=TargetKind.pod, namespace="pp1", name="dd1-0"), id="pod"),
    # kube-state-metrics alerts: `pod` is the exporter's pod, the workload label wins
    pytest.param({**KSM, "namespace": "default", "deployment": "nginx",
                  "pod": "kube-state-metrics-7c6f4866fc-rclv2"},
                 Target(kind=TargetKind.deployment, namespace="default", name="nginx"),
                 id="deployment-over-ksm-pod"),
    pytest.param({**KSM, "namespace": "pp1", "statefulset": "dd1",
                  "pod": "kube-state-metrics-7c6f4866fc-rclv2"},
                 Target(kind=TargetKind.stateful_set, namespace="pp1", name="dd1"),
                 id="statefulset-over-ksm-pod"),
    pytest.param({**KSM, "namespace": "monitoring", "daemonset": "node-exporter"},
                 Target(kind=TargetKind.daemon_set, namespace="monitoring", name="node-exporter"),
                 id="daemonset"),
    # `job` is the scrape job ("kube-state-metrics"); the Kubernetes Job is `job_name`
    pytest.param({**KSM, "namespace": "demo-project", "job_name": "dddd",
                  "pod": "kube-state-metrics-7c6f4866fc-rclv2"},
                 Target(kind=TargetKind.job, namespace="demo-project", name="dddd"),
                 id="job-name-not-job"),
    # kube-state-metrics' own pod on a node alert: the node is the subject
    pytest.param({**KSM, "namespace": "monitoring", "node": "worker-1",
                  "pod": "kube-prometheus-stack-kube-state-metrics-5d4b7c9f8-x2x9z"},
                 Target(kind=TargetKind.node, name="worker-1"), id="ksm-node-alert"),
    pytest.param({**KSM, "namespace": "monitoring",
                  "pod": "kube-prometheus-stack-kube-state-metrics-5d4b7c9f8-x2x9z"},
                 None, id="ksm-own-pod-only"),
    # KSM reports a workload pod in a pod-level alert: that pod is the subject
    pytest.param({**KSM, "namespace": "pp1", "pod": "dd1-0", "container": "busybox"},
                 Target(kind=TargetKind.pod, namespace="pp1", name="dd1-0"),
                 id="ksm-workload-pod"),
    # node-exporter: instance relabelled to the node name, pod is the exporter
    pytest.param({"job": "node-exporter", "namespace": "monitoring", "instance": "worker-2",
                  "pod": "node-exporter-8x7kq"},
                 Target(kind=TargetKind.node, name="worker-2"), id="node-exporter-instance"),
    # kubelet alerts: namespace of the kubelet Service, the node is the subject
    pytest.param({"job": "kubelet", "namespace": "kube-system", "node": "worker-3"},
                 Target(kind=TargetKind.node, name="worker-3"), id="kubelet-node"),
    pytest.param({"node": "worker-3"}, Target(kind=TargetKind.node, name="worker-3"), id="node"),
    pytest.param({"instance": "ip-10-0-0-1.ec2.internal:9100"},
                 Target(kind=TargetKind.node, name="ip-10-0-0-1.ec2.internal"), id="instance-host"),
    # cluster-scoped, nothing named (KubeletDown)
    pytest.param({"alertname": "KubeletDown", "severity": "critical"}, None, id="no-labels"),
    pytest.param({"instance": "10.0.0.1:9100"}, None, id="instance-ipv4"),
    pytest.param({"instance": "[fd00::1]:9100"}, None, id="instance-ipv6-port"),
    pytest.param({"instance": "fd00::1"}, None, id="instance-ipv6"),
    pytest.param({"instance": "localhost:9090"}, None, id="instance-localhost"),
    pytest.param({"instance": "prometheus.monitoring.svc:9090"}, None, id="instance-service"),
    pytest.param({"instance": "prometheus.monitoring.svc.cluster.local:9090"}, None,
                 id="instance-service-fqdn"),
    pytest.param({"instance": "prometheus.monitoring.svc.cluster.local"}, None,
                 id="instance-service-fqdn-no-port"),
    pytest.param({"instance": "https://example.com"}, None, id="instance-url"),
    # a namespaced series' instance is a Service address, not a node
    pytest.param({"namespace": "shop", "instance": "web:8080", "job": "web"}, None,
                 id="namespaced-instance"),
    # Falco's node fields: a host event on a named node
    pytest.param({"k8s_node_name": "worker-4"}, Target(kind=TargetKind.node, name="worker-4"),
                 id="falcosidekick-node"),
    pytest.param({"k8s.node.name": "worker-5"}, Target(kind=TargetKind.node, name="worker-5"),
                 id="falco-node"),
    pytest.param({"k8s.ns.name": "<NA>", "k8s.node.name": "worker-5"},
                 Target(kind=TargetKind.node, name="worker-5"), id="falco-node-no-namespace"),
    # Falcosidekick label names and Falco field names
    pytest.param({"k8s_ns_name": "default", "k8s_pod_name": "kubecon"},
                 Target(kind=TargetKind.pod, namespace="default", name="kubecon"), id="falcosidekick"),
    pytest.param({"k8s.ns.name": "default", "k8s.pod.name": "kubecon"},
                 Target(kind=TargetKind.pod, namespace="default", name="kubecon"), id="falco"),
    pytest.param({"k8s.ns.name": None, "k8s.pod.name": None}, None, id="falco-null"),
    pytest.param({"k8s.ns.name": "<NA>", "k8s.pod.name": "<NA>"}, None, id="falco-na"),
    pytest.param({"ka.target.namespace": "default", "ka.target.name": "kubecon",
                  "ka.target.resource": "pods"},
                 Target(kind=TargetKind.pod, namespace="default", name="kubecon"), id="k8saudit-pod"),
    pytest.param({"ka.target.namespace": "default", "ka.target.name": "app-config",
                  "ka.target.resource": "configmaps"}, None, id="k8saudit-configmap"),
])
def test_target_from_labels(labels: dict[str, str | None], expected: Target | None) -> None:
    assert target_from_labels(labels) == expected
