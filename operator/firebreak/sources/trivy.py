"""Trivy Operator reports, judged against thresholds, as signals.

The Trivy Operator writes, per workload, a VulnerabilityReport and an
ExposedSecretReport per container and one ConfigAuditReport, and rewrites each
whenever it rescans (by default every 24 hours, as a new object). Most reports
list findings nobody can act on today, so a report raises a signal only when
enough findings pass the configured thresholds; and its fingerprint is built from
what was found, not from the report object, so a rescan with the same findings
updates the existing incident while a new finding opens a new one.

A secret's value (Trivy's ``match``, masked or not) never leaves this module:
an incident is stored in etcd, copied into Kopf's annotations and shown to
everyone who may read incidents, so it names the rule, the category and the file
only.

These reports are namespaced, and Trivy writes each in the namespace of the
object it scanned. A report that names an object elsewhere (or a Node) is not
taken at its word: whoever may write reports in one namespace must not steer
containment into another, so such a signal keeps no target, and says why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from ..api import Severity, Source, Target, TargetKind
from .signal import Signal, fingerprint_of

TrivySeverity = Literal["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"]

# Trivy's own order, lowest first.
_RANK: dict[str, int] = {"UNKNOWN": 0, "LOW": 1, "MEDIUM": 2, "HIGH": 3, "CRITICAL": 4}
_SEVERITY: dict[str, Severity] = {
    "CRITICAL": Severity.critical, "HIGH": Severity.high, "MEDIUM": Severity.medium,
    "LOW": Severity.low, "UNKNOWN": Severity.info,
}

# The labels (and annotation) the Trivy Operator puts on every report to name the
# scanned workload. ownerReferences only say which object owns the report.
LABEL_KIND = "trivy-operator.resource.kind"
LABEL_NAME = "trivy-operator.resource.name"
LABEL_NAME_HASH = "trivy-operator.resource.name-hash"
LABEL_NAMESPACE = "trivy-operator.resource.namespace"
LABEL_CONTAINER = "trivy-operator.container.name"
# When the name does not fit a label value (over 63 characters) the operator
# writes LABEL_NAME_HASH instead and keeps the real name in this annotation.
ANNOTATION_NAME = "trivy-operator.resource.name"

ALERT_NAME = "VulnerableWorkload"
_DESCRIBED = 20  # findings listed in the description; the rest are counted
# Rules and checks given a label each (``rule/<id>``, ``check/<id>``), the worst
# first, so a playbook can answer one whichever is on top; well within the labels a
# signal may carry.
_LABELLED = 30


class TrivyThresholds(BaseModel):
    """Which findings count, and how many make a signal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_severity: TrivySeverity = "CRITICAL"
    require_fix: bool = Field(
        default=True, description="Count only findings with a non-empty fixedVersion.")
    min_count: int = Field(default=1, ge=1)
    secret_min_severity: TrivySeverity = Field(
        default="HIGH", description="An exposed secret this severe or worse opens an incident.")
    config_min_severity: TrivySeverity = Field(
        default="CRITICAL",
        description="A failed configuration check this severe or worse opens an incident.")


class _Wire(BaseModel):
    # extra="allow": reports carry much more (links, os, summary, managedFields)
    # and gain fields across Trivy releases; only what is used here is checked.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True)


class _Vulnerability(_Wire):
    vulnerability_id: str = Field(alias="vulnerabilityID", min_length=1)
    severity: TrivySeverity
    fixed_version: str = ""
    installed_version: str = ""
    resource: str = ""
    score: float | None = None

    @field_validator("fixed_version", "installed_version", "resource", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value


class _Artifact(_Wire):
    repository: str | None = None
    tag: str | None = None
    digest: str | None = None


class _Registry(_Wire):
    server: str | None = None


class _ImageReportBody(_Wire):
    """What every report about an image says of it."""

    artifact: _Artifact | None = None
    registry: _Registry | None = None
    update_timestamp: AwareDatetime | None = None


class _ReportBody(_ImageReportBody):
    vulnerabilities: list[_Vulnerability] = Field(default_factory=list)

    @field_validator("vulnerabilities", mode="before")
    @classmethod
    def _null_is_none_found(cls, value: Any) -> Any:
        return [] if value is None else value


class _OwnerReference(_Wire):
    kind: str
    name: str
    controller: bool | None = None


class _Metadata(_Wire):
    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    owner_references: list[_OwnerReference] = Field(default_factory=list)


class VulnerabilityReport(_Wire):
    """An ``aquasecurity.github.io/v1alpha1`` VulnerabilityReport, as far as it is read."""

    api_version: Literal["aquasecurity.github.io/v1alpha1"]
    kind: Literal["VulnerabilityReport"]
    metadata: _Metadata
    report: _ReportBody


def _subject(meta: _Metadata) -> tuple[str | None, str | None, str | None]:
    """Kind, namespace and name of the scanned workload."""
    owner = next((o for o in meta.owner_references if o.controller), None)
    kind = meta.labels.get(LABEL_KIND) or (owner.kind if owner else None)
    name = meta.labels.get(LABEL_NAME) or meta.annotations.get(ANNOTATION_NAME)
    if not name and owner and owner.kind == kind:
        # Hashed label and no annotation (older operators): the owner is the workload.
        name = owner.name
    namespace = meta.labels.get(LABEL_NAMESPACE) or meta.namespace
    return kind, namespace, name


_TARGET_KINDS = {kind.value: kind for kind in TargetKind}


def _target(kind: str | None, namespace: str | None, name: str | None,
            meta: _Metadata) -> tuple[Target | None, str | None]:
    """The object to act on, or None; and why a named object is not acted on."""
    # Kinds Firebreak cannot act on (CronJob, ReplicationController, Role...) get no
    # target; the signal still records them in its labels.
    target_kind = _TARGET_KINDS.get(kind or "")
    if target_kind is None or not name:
        return None, None
    if meta.namespace and (target_kind is TargetKind.node or namespace != meta.namespace):
        where = name if target_kind is TargetKind.node else f"{namespace}/{name}"
        return None, (f"the report {meta.namespace}/{meta.name} names {kind} {where}: a "
                      f"namespaced report speaks only for objects in its own namespace")
    if target_kind is TargetKind.node:  # a report with no namespace: a cluster-scoped one
        return Target(kind=target_kind, name=name), None
    if not namespace:
        return None, None
    return Target(kind=target_kind, namespace=namespace, name=name), None


def _image(body: _ReportBody | _SecretBody) -> str | None:
    artifact = body.artifact
    if not artifact or not artifact.repository:
        return None
    image = artifact.repository
    if body.registry and body.registry.server:
        image = f"{body.registry.server}/{image}"
    if artifact.tag:
        return f"{image}:{artifact.tag}"
    if artifact.digest:
        return f"{image}@{artifact.digest}"
    return image


def _plural(count: int) -> str:
    return "vulnerability" if count == 1 else "vulnerabilities"


def signal_from_vulnerability_report(
    report: Mapping[str, Any], thresholds: TrivyThresholds | None = None,
) -> Signal | None:
    """The signal a VulnerabilityReport raises, or None when too few findings pass.

    Raises pydantic's ``ValidationError`` when ``report`` is not a well-formed
    VulnerabilityReport.
    """
    limits = thresholds or TrivyThresholds()
    parsed = VulnerabilityReport.model_validate(dict(report))
    body = parsed.report

    floor = _RANK[limits.min_severity]
    passing = [
        v for v in body.vulnerabilities
        if _RANK[v.severity] >= floor and (not limits.require_fix or v.fixed_version.strip())
    ]
    if len(passing) < limits.min_count:
        return None
    # Worst first; among equals the higher score, then the ID, so the order (and
    # the top finding) does not depend on the order Trivy listed them in.
    passing.sort(key=lambda v: (-_RANK[v.severity], -(v.score or 0.0), v.vulnerability_id))
    top = passing[0]
    ids = sorted({v.vulnerability_id for v in passing})

    kind, namespace, name = _subject(parsed.metadata)
    target, problem = _target(kind, namespace, name, parsed.metadata)
    container = parsed.metadata.labels.get(LABEL_CONTAINER)
    image = _image(body)
    # Identity of the finding, not of the report object: no uid or timestamps,
    # which change when Trivy re-creates the report. The report's name (derived
    # from the workload, so stable) stands in only when the workload's is unknown.
    fingerprint = fingerprint_of(kind, namespace, name or parsed.metadata.name, container, *ids)

    count = len(passing)
    fixable = "fixable " if limits.require_fix else ""
    severities = sorted({v.severity for v in passing}, key=lambda s: -_RANK[s])
    if len(severities) == 1:
        what = f"{count} {fixable}{severities[0]} {_plural(count)}"
    else:
        tally = ", ".join(
            f"{sum(v.severity == s for v in passing)} {s}" for s in severities)
        what = f"{count} {fixable}{_plural(count)} ({tally})"
    subject = f"{(kind or 'workload').lower()} {name or parsed.metadata.name}"
    title = f"{what} in {container or image or subject} ({subject})"

    lines = [
        f"{v.vulnerability_id} ({v.severity}) in {v.resource or '?'} {v.installed_version}".rstrip()
        + (f", fixed in {v.fixed_version}" if v.fixed_version else ", no fix yet")
        for v in passing[:_DESCRIBED]
    ]
    if count > _DESCRIBED:
        lines.append(f"... and {count - _DESCRIBED} more")
    if image:
        lines.insert(0, f"Image: {image}")

    labels = {
        "trivy_resource_kind": kind or "",
        "trivy_resource_name": name or "",
        "vulnerabilities": str(count),
        "top_vulnerability": top.vulnerability_id,
    }
    if container:
        labels["container"] = container
    if image:
        labels["image"] = image

    return Signal(
        source=Source.trivy,
        fingerprint=fingerprint,
        severity=_SEVERITY[top.severity],
        title=title,
        description="\n".join(lines),
        alert_name=ALERT_NAME,
        target=target,
        target_problem=problem,
        labels={key: value for key, value in labels.items() if value},
        time=body.update_timestamp,
    )


# --- ExposedSecretReport --------------------------------------------------------------

SECRET_ALERT_NAME = "ExposedSecret"


class _Secret(_Wire):
    # ``match`` (the line holding the secret) is deliberately not a field, and unknown
    # fields are dropped rather than kept: what is not held cannot be copied into an
    # incident by mistake.
    model_config = ConfigDict(extra="ignore")

    rule_id: str = Field(alias="ruleID", min_length=1)
    severity: TrivySeverity
    category: str = ""
    target: str = ""

    @field_validator("category", "target", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value


class _SecretBody(_ImageReportBody):
    secrets: list[_Secret] = Field(default_factory=list)

    @field_validator("secrets", mode="before")
    @classmethod
    def _null_is_none_found(cls, value: Any) -> Any:
        return [] if value is None else value


class ExposedSecretReport(_Wire):
    """An ``aquasecurity.github.io/v1alpha1`` ExposedSecretReport, as far as it is read."""

    # A malformed report is logged with pydantic's message, which would otherwise
    # quote the offending input: a finding's ``match``, a ``secrets`` that is an
    # object, or a finding whose file is a list can all carry the value.
    model_config = ConfigDict(hide_input_in_errors=True)

    api_version: Literal["aquasecurity.github.io/v1alpha1"]
    kind: Literal["ExposedSecretReport"]
    metadata: _Metadata
    report: _SecretBody


def _worse(secret: _Secret, than: _Secret) -> bool:
    # The category breaks a tie, so the one kept does not depend on the order.
    return (_RANK[secret.severity], secret.category) > (_RANK[than.severity], than.category)


def _subject_text(kind: str | None, name: str | None, meta: _Metadata) -> str:
    return f"{(kind or 'workload').lower()} {name or meta.name}"


def _trivy_labels(kind: str | None, name: str | None, found: Iterable[tuple[str, str]],
                  **more: str | None) -> dict[str, str]:
    """The report's labels, and one per rule or check found (``found``: key and
    severity, worst first), each with its worst severity."""
    labels: dict[str, str] = {}
    for key, severity in found:
        if key not in labels and len(labels) < _LABELLED:
            labels[key] = severity
    named = {"trivy_resource_kind": kind, "trivy_resource_name": name, **more}
    return {**labels, **{key: value for key, value in named.items() if value}}


def signal_from_exposed_secret_report(
    report: Mapping[str, Any], thresholds: TrivyThresholds | None = None,
) -> Signal | None:
    """The signal an ExposedSecretReport raises, or None when no secret is severe enough.

    Only each secret's rule, category, severity and file are read; its value never
    is. Raises pydantic's ``ValidationError`` on a malformed report.
    """
    limits = thresholds or TrivyThresholds()
    parsed = ExposedSecretReport.model_validate(dict(report))
    body = parsed.report
    floor = _RANK[limits.secret_min_severity]
    # One finding per rule and file: Trivy lists every matching line (a key file with
    # two Stripe keys is two entries), which is one credential leak to rotate there.
    # The worst of them stands for it, whatever order Trivy listed them in.
    found: dict[tuple[str, str], _Secret] = {}
    for secret in body.secrets:
        if _RANK[secret.severity] < floor:
            continue
        key = (secret.rule_id, secret.target)
        if key not in found or _worse(secret, found[key]):
            found[key] = secret
    if not found:
        return None
    passing = sorted(found.values(),
                     key=lambda s: (-_RANK[s.severity], s.rule_id, s.target))
    top = passing[0]

    kind, namespace, name = _subject(parsed.metadata)
    target, problem = _target(kind, namespace, name, parsed.metadata)
    container = parsed.metadata.labels.get(LABEL_CONTAINER)
    image = _image(body)
    fingerprint = fingerprint_of(
        "ExposedSecretReport", kind, namespace, name or parsed.metadata.name, container,
        *(f"{s.rule_id}@{s.target}" for s in passing))

    count = len(passing)
    subject = _subject_text(kind, name, parsed.metadata)
    what = f"{count} exposed {'secret' if count == 1 else 'secrets'}"
    title = f"{what} ({top.category or top.rule_id}) in {container or image or subject} ({subject})"
    lines = [
        f"{s.rule_id} ({s.severity}, {s.category or 'uncategorised'}) in "
        f"{s.target or 'the image'}"
        for s in passing[:_DESCRIBED]
    ]
    if count > _DESCRIBED:
        lines.append(f"... and {count - _DESCRIBED} more")
    if image:
        lines.insert(0, f"Image: {image}")
    lines.append("Rotate the credential: removing it from the image does not revoke it.")

    return Signal(
        source=Source.trivy,
        fingerprint=fingerprint,
        severity=_SEVERITY[top.severity],
        title=title,
        description="\n".join(lines),
        alert_name=SECRET_ALERT_NAME,
        target=target,
        target_problem=problem,
        labels=_trivy_labels(
            kind, name, ((f"rule/{s.rule_id}", s.severity) for s in passing),
            trivy_report="ExposedSecretReport", container=container,
            image=image, secrets=str(count), top_rule=top.rule_id,
            secret_category=top.category),
        time=body.update_timestamp,
    )


# --- ConfigAuditReport ----------------------------------------------------------------

CONFIG_ALERT_NAME = "MisconfiguredWorkload"


class _Scope(_Wire):
    value: str = ""


class _Check(_Wire):
    check_id: str = Field(alias="checkID", min_length=1)
    severity: TrivySeverity
    success: bool
    title: str = ""
    messages: list[str] = Field(default_factory=list)
    scope: _Scope | None = None

    @field_validator("title", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("messages", mode="before")
    @classmethod
    def _null_is_no_message(cls, value: Any) -> Any:
        return [] if value is None else value


class _AuditBody(_Wire):
    update_timestamp: AwareDatetime | None = None
    checks: list[_Check] = Field(default_factory=list)

    @field_validator("checks", mode="before")
    @classmethod
    def _null_is_none_found(cls, value: Any) -> Any:
        return [] if value is None else value


class ConfigAuditReport(_Wire):
    """An ``aquasecurity.github.io/v1alpha1`` ConfigAuditReport, as far as it is read."""

    api_version: Literal["aquasecurity.github.io/v1alpha1"]
    kind: Literal["ConfigAuditReport"]
    metadata: _Metadata
    report: _AuditBody


def _scoped(check: _Check) -> str:
    return f"{check.check_id}@{check.scope.value}" if check.scope and check.scope.value \
        else check.check_id


def signal_from_config_audit_report(
    report: Mapping[str, Any], thresholds: TrivyThresholds | None = None,
) -> Signal | None:
    """The signal a ConfigAuditReport raises, or None when no check severe enough failed.

    Raises pydantic's ``ValidationError`` on a malformed report.
    """
    limits = thresholds or TrivyThresholds()
    parsed = ConfigAuditReport.model_validate(dict(report))
    body = parsed.report
    floor = _RANK[limits.config_min_severity]
    found = {_scoped(c): c for c in body.checks
             if not c.success and _RANK[c.severity] >= floor}
    if not found:
        return None
    passing = sorted(found.items(), key=lambda kv: (-_RANK[kv[1].severity], kv[0]))
    top = passing[0][1]

    kind, namespace, name = _subject(parsed.metadata)
    target, problem = _target(kind, namespace, name, parsed.metadata)
    fingerprint = fingerprint_of(
        "ConfigAuditReport", kind, namespace, name or parsed.metadata.name,
        *(key for key, _ in passing))

    count = len(passing)
    subject = _subject_text(kind, name, parsed.metadata)
    title = (f"{count} failed {top.severity} configuration "
             f"{'check' if count == 1 else 'checks'} ({top.check_id}) in {subject}")
    lines = []
    for _, check in passing[:_DESCRIBED]:
        where = f" in container {check.scope.value}" if check.scope and check.scope.value else ""
        said = f": {'; '.join(check.messages)}" if check.messages else \
            (f": {check.title}" if check.title else "")
        lines.append(f"{check.check_id} ({check.severity}){where}{said}")
    if count > _DESCRIBED:
        lines.append(f"... and {count - _DESCRIBED} more")

    return Signal(
        source=Source.trivy,
        fingerprint=fingerprint,
        severity=_SEVERITY[top.severity],
        title=title,
        description="\n".join(lines),
        alert_name=CONFIG_ALERT_NAME,
        target=target,
        target_problem=problem,
        labels=_trivy_labels(
            kind, name, ((f"check/{c.check_id}", c.severity) for _, c in passing),
            trivy_report="ConfigAuditReport", failed_checks=str(count),
            top_check=top.check_id),
        time=body.update_timestamp,
    )
