"""The one shape every alert takes inside Firebreak, and how it names its incident.

Each source (Alertmanager, Falco, Prometheus, Trivy) turns its payload into a
``Signal``. The incident's name is derived from the signal's fingerprint, so two
deliveries of one alert, racing or arriving at two operator replicas, name the
same object: the first create wins and the others update it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from ..api import Severity, Source, Target, TargetKind


class SignalStatus(StrEnum):
    firing = "firing"
    resolved = "resolved"


class Signal(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Source
    fingerprint: str = Field(min_length=1)
    status: SignalStatus = SignalStatus.firing
    severity: Severity
    title: str = Field(min_length=1)
    description: str | None = None
    alert_name: str | None = None
    target: Target | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    time: dt.datetime | None = None


def fingerprint_of(*parts: object) -> str:
    """A stable fingerprint over the parts that identify one alert.

    ``None`` counts as empty: a field that is null in one delivery and absent from
    the next must not split one alert into two incidents.
    """
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def labels_fingerprint(labels: Mapping[str, str]) -> str:
    """``fingerprint_of`` over a label set, independent of the order it arrived in."""
    return fingerprint_of(*(f"{key}={value}" for key, value in sorted(labels.items())))


# Names stay within 63 characters so they are valid DNS labels and label values too;
# the longest source name ("alertmanager") leaves this much room for the readable hint.
_MAX_NAME = 63
_DIGEST = 16


def incident_name(signal: Signal) -> str:
    """The incident's name: readable prefix, then a digest of source and fingerprint."""
    source = signal.source.value
    digest = hashlib.sha256(f"{source}/{signal.fingerprint}".encode()).hexdigest()[:_DIGEST]
    room = _MAX_NAME - len(source) - _DIGEST - 2
    hint = re.sub(r"[^a-z0-9]+", "-", (signal.alert_name or signal.title).lower())
    # Trim after cutting, or a cut at a separator leaves "--" before the digest.
    hint = hint.strip("-")[:room].strip("-")
    return f"{source}-{hint}-{digest}" if hint else f"{source}-{digest}"


# --- severities -------------------------------------------------------------------

_SEVERITY_WORDS = {
    # Alertmanager / Prometheus conventions
    "none": Severity.info, "info": Severity.info, "informational": Severity.info,
    "low": Severity.low, "minor": Severity.low,
    "warning": Severity.medium, "warn": Severity.medium, "medium": Severity.medium,
    "moderate": Severity.medium,
    "high": Severity.high, "major": Severity.high, "error": Severity.high,
    "critical": Severity.critical, "page": Severity.critical,
    # Falco priorities ("critical", "error", "warning", "informational" are above)
    "emergency": Severity.critical, "alert": Severity.critical, "notice": Severity.low,
    "debug": Severity.info,
    # Falcosidekick's Alertmanager output labels Notice/Informational/Debug events so
    "information": Severity.info,
}


def severity_from(word: str | None, default: Severity = Severity.medium) -> Severity:
    """The severity a word names (case and surrounding blanks ignored), else ``default``."""
    if not word:
        return default
    return _SEVERITY_WORDS.get(word.strip().lower(), default)


# --- targets ----------------------------------------------------------------------

# A workload label names the object an alert is about; when one is present the
# `pod` label is usually kube-state-metrics' own pod, not the workload's.
_WORKLOAD_LABELS = (
    ("deployment", TargetKind.deployment),
    ("statefulset", TargetKind.stateful_set),
    ("daemonset", TargetKind.daemon_set),
    ("job_name", TargetKind.job),
)

# Exporters that report on other objects. On their series the scrape adds the
# exporter's own `pod` (and `namespace`), e.g. on KubeNodeNotReady or
# NodeFilesystemSpaceFillingUp; that pod is never what the alert is about.
_EXPORTER_JOBS = ("kube-state-metrics", "node-exporter")

_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _node_from_instance(instance: str) -> str | None:
    """The node an ``instance`` label names, when it names one by host name.

    kube-prometheus relabels node-exporter's ``instance`` to the node name; other
    instances are addresses (not a name to act on) or in-cluster service names.
    """
    if instance.startswith("["):  # "[v6]:port": an address
        return None
    host, sep, port = instance.rpartition(":")
    if not sep:
        host = instance
    elif ":" in host or not port.isdigit():  # a bare IPv6 address
        return None
    if (not _NODE_NAME.fullmatch(host) or _IPV4.fullmatch(host) or host == "localhost"
            or host.endswith(".svc") or ".svc." in host):
        return None
    return host


def target_from_labels(labels: Mapping[str, str | None]) -> Target | None:
    """The object a set of alert labels is about, or None when they name none.

    Understands Prometheus/kube-state-metrics labels, Falcosidekick's label names
    (``k8s_ns_name``) and Falco's own field names (``k8s.ns.name``, ``ka.target.*``).
    """

    def get(*keys: str) -> str | None:
        for key in keys:
            value = labels.get(key)
            # Falco renders a field it could not resolve as "<NA>".
            if value and value != "<NA>":
                return value
        return None

    namespace = get("namespace", "k8s_ns_name", "k8s.ns.name", "ka.target.namespace")
    if namespace:
        for key, kind in _WORKLOAD_LABELS:
            if name := get(key):
                return Target(kind=kind, namespace=namespace, name=name)
        pod = get("pod", "k8s_pod_name", "k8s.pod.name")
        job = get("job")
        if pod and job in _EXPORTER_JOBS and job in pod:
            pod = None  # the exporter's own pod
        if pod:
            return Target(kind=TargetKind.pod, namespace=namespace, name=pod)
        if labels.get("ka.target.resource") == "pods" and (pod := get("ka.target.name")):
            return Target(kind=TargetKind.pod, namespace=namespace, name=pod)
        # No namespaced object named: the namespace may be the scrape target's
        # (kubelet, an exporter), so a node named alongside is still the subject.
    if node := get("node", "k8s_node_name", "k8s.node.name"):
        return Target(kind=TargetKind.node, name=node)
    # A namespaced series' `instance` is usually a Service or pod address; only
    # node-exporter's is relabelled to the node name (as kube-prometheus does).
    instance = get("instance") if not namespace or get("job") == "node-exporter" else None
    if instance and (node := _node_from_instance(instance)):
        return Target(kind=TargetKind.node, name=node)
    return None
