"""The one shape every alert takes inside Firebreak, and how it names its incident.

Each source (Alertmanager, Falco, Prometheus, Trivy) turns its payload into a
``Signal``. The incident's name is derived from the signal's fingerprint, so two
deliveries of one alert, racing or arriving at two operator replicas, name the
same object: the first create wins and the others update it.

A ``Signal`` is admissible by construction, whatever the payload held: every
string is valid Unicode and bounded (the incident's spec is stored, and Kopf copies
it into an annotation, with a limit of 256 KiB for all annotations together), and
a target whose names Kubernetes could never accept is dropped, with the reason kept
in ``target_problem``. What is decided here is decided at intake, never discovered
by an action half-way through a response.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    # Why the target the payload named was dropped (names Kubernetes cannot hold).
    target_problem: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    time: dt.datetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _admissible(cls, data: Any) -> Any:
        return admissible(data) if isinstance(data, dict) else data


def _digest(text: str) -> str:
    # surrogatepass: a lone surrogate from a JSON escape ("\ud800") still hashes.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def fingerprint_of(*parts: object) -> str:
    """A stable fingerprint over the parts that identify one alert.

    ``None`` counts as empty: a field that is null in one delivery and absent from
    the next must not split one alert into two incidents.
    """
    return _digest("\x1f".join("" if p is None else str(p) for p in parts))[:16]


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
    digest = _digest(f"{source}/{signal.fingerprint}")[:_DIGEST]
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
                return clean(value)
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


# --- what a signal may carry --------------------------------------------------------

# Limits in bytes of the string as JSON with every non-ASCII character escaped (the
# largest form any writer gives it): the spec holding all of them stays far below
# the 256 KiB that Kopf's copy of it in an annotation may take.
FINGERPRINT_LIMIT = 128  # longer fingerprints are replaced by their digest
ALERT_NAME_LIMIT = 256
TITLE_LIMIT = 1024
DESCRIPTION_LIMIT = 8192
LABEL_KEY_LIMIT = 256
LABEL_VALUE_LIMIT = 1024
LABELS_LIMIT = 16 * 1024  # all labels together
LABEL_COUNT_LIMIT = 62  # intake adds two of its own (the workload's kind and name)
PROBLEM_VALUE_LIMIT = 80

# Kept first when the labels are over a limit: what matching and people look at.
_KEY_LABELS = (
    "alertname", "severity", "priority", "rule", "namespace", "pod", "deployment",
    "statefulset", "daemonset", "job_name", "node", "instance", "job", "container",
    "k8s_ns_name", "k8s_pod_name", "source", "hostname",
)
_ELLIPSIS = "\u2026"
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SHORT = frozenset('"\\\b\f\n\r\t')


def _cost(char: str) -> int:
    """Bytes of one character in ASCII-only JSON."""
    code = ord(char)
    if code < 0x20 or code == 0x7F:  # control characters (DEL too) are \u-escaped
        return 2 if char in _ESCAPED_SHORT else 6
    if code < 0x80:
        return 2 if char in _ESCAPED_SHORT else 1
    return 12 if code > 0xFFFF else 6


def json_size(text: str) -> int:
    """Bytes of ``text`` as a JSON string with every non-ASCII character escaped."""
    return len(json.dumps(text))


def clean(text: str) -> str:
    """Valid Unicode: a lone surrogate (which JSON can escape but UTF-8 cannot carry)
    becomes U+FFFD, as Go's encoding/json decodes it."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def clip(text: str, limit: int) -> str:
    """``text`` (cleaned), cut so that its JSON form takes at most ``limit`` bytes; a
    cut is marked with an ellipsis."""
    text = clean(text)
    if len(text) * 12 + 2 <= limit or json_size(text) <= limit:
        return text
    room = limit - 2 - _cost(_ELLIPSIS)
    used = 0
    for index, char in enumerate(text):
        used += _cost(char)
        if used > room:
            return text[:index] + _ELLIPSIS
    return text  # not reached: the text did not fit


def bounded_fingerprint(fingerprint: str) -> str:
    """The fingerprint, or its digest when it is too long (never a prefix: two long
    fingerprints sharing one would merge two alerts)."""
    cleaned = clean(fingerprint)
    if json_size(cleaned) <= FINGERPRINT_LIMIT:
        return cleaned
    return f"sha256:{_digest(fingerprint)}"


def bounded_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """At most ``LABEL_COUNT_LIMIT`` labels in ``LABELS_LIMIT`` bytes, each key and
    value clipped; well-known keys are kept first, then the rest in key order."""
    rank = {key: i for i, key in enumerate(_KEY_LABELS)}
    ordered = sorted(labels.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))
    kept: dict[str, str] = {}
    used = 0
    for key, value in ordered:
        if len(kept) >= LABEL_COUNT_LIMIT:
            break
        key, value = clip(key, LABEL_KEY_LIMIT), clip(value, LABEL_VALUE_LIMIT)
        size = json_size(key) + json_size(value) + 2
        if key in kept or used + size > LABELS_LIMIT:
            continue
        kept[key] = value
        used += size
    return dict(sorted(kept.items()))


# DNS-1123: a namespace is a label; the other kinds a target names are subdomains.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _quoted(value: str) -> str:
    return json.dumps(clip(value, PROBLEM_VALUE_LIMIT))


def name_problem(target: Target) -> str | None:
    """Why Kubernetes could never hold an object named like ``target``, or None.

    Such names (``.``, ``..``, upper case, too long, not ASCII) are refused by the
    API server on every request, so they are decided here, once.
    """
    namespace = target.namespace
    if namespace is not None and not (len(namespace) <= 63 and _DNS_LABEL.fullmatch(namespace)):
        return (f"namespace {_quoted(namespace)} is not a valid namespace name "
                f"(a DNS-1123 label: lower case, digits and '-', at most 63 characters)")
    name = target.name
    if not (len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name)):
        return (f"{target.kind.value} name {_quoted(name)} is not a valid object name "
                f"(a DNS-1123 subdomain: lower case, digits, '-' and '.', at most 253 "
                f"characters)")
    return None


def admissible(fields: dict[str, Any]) -> dict[str, Any]:
    """A signal's fields, cleaned and bounded, with a target Kubernetes cannot name
    dropped (and why, in ``target_problem``). Fields of the wrong type are left for
    validation to refuse."""
    fields = dict(fields)

    def bound(key: str, limit: int) -> None:
        if isinstance(fields.get(key), str):
            fields[key] = clip(fields[key], limit)

    if isinstance(fields.get("fingerprint"), str):
        fields["fingerprint"] = bounded_fingerprint(fields["fingerprint"])
    bound("title", TITLE_LIMIT)
    bound("description", DESCRIPTION_LIMIT)
    bound("alert_name", ALERT_NAME_LIMIT)
    bound("target_problem", DESCRIPTION_LIMIT)
    labels = fields.get("labels")
    if isinstance(labels, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        fields["labels"] = bounded_labels(labels)
    target = fields.get("target")
    if isinstance(target, dict):
        try:
            target = Target.model_validate(target)
        except ValueError:
            return fields  # validation names the problem
    if isinstance(target, Target) and (problem := name_problem(target)) is not None:
        fields["target"] = None
        fields["target_problem"] = problem
    return fields
