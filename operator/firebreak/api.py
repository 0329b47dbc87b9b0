"""The Firebreak API (group ``firebreak.dev``, version ``v1alpha1``) as pydantic models.

These models and the CRDs in ``crds/`` describe the same objects; a unit test walks
both and fails when they disagree. Field names are the API's (camelCase) through
aliases; Python code uses snake_case.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from enum import StrEnum
from string import Template
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "firebreak.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
INCIDENT_PLURAL = "securityincidents"
PLAYBOOK_PLURAL = "responseplaybooks"
# Held by every incident until its applied steps are reverted (see handlers.release).
FINALIZER = f"{GROUP}/finalizer"
# Set by intake on an incident with nothing to act on: why its target was dropped, or
# that its namespace does not exist.
TARGET_PROBLEM_ANNOTATION = f"{GROUP}/target-problem"
# Set by intake on the incident it creates: when the signal arrived and, when the
# signal carries one, its own time. The creation counts that signal; the status's
# signal fields record it from the first status write on (see ``signal_fields``).
FIRST_SEEN_ANNOTATION = f"{GROUP}/first-seen"
SIGNAL_TIME_ANNOTATION = f"{GROUP}/signal-time"
SIGNAL_FIELDS = ("signalCount", "firstSeen", "lastSeen", "signalTimes")


def signal_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """An incident's signal fields (``status.signalCount`` and the rest) as they stand:
    the status's, or, before any status was written, those its creation implies (one
    signal, when it arrived). Empty for an incident no signal made."""
    status = body.get("status") or {}
    if status.get("signalCount") is not None:
        return {k: status[k] for k in SIGNAL_FIELDS if k in status}
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    first = annotations.get(FIRST_SEEN_ANNOTATION)
    if not first:
        return {}
    fields: dict[str, Any] = {"signalCount": 1, "firstSeen": first, "lastSeen": first}
    if annotations.get(SIGNAL_TIME_ANNOTATION):
        fields["signalTimes"] = [annotations[SIGNAL_TIME_ANNOTATION]]
    return fields


class Model(BaseModel):
    """Base for API models: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Severity(StrEnum):
    info = "info"
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class Source(StrEnum):
    alertmanager = "alertmanager"
    prometheus = "prometheus"
    trivy = "trivy"
    falco = "falco"
    manual = "manual"
    external = "external"  # any other scanner or script, through POST /signals


class ActionName(StrEnum):
    isolate_network = "isolateNetwork"
    cordon_node = "cordonNode"
    scale_down = "scaleDown"
    snapshot = "snapshot"
    label = "label"
    delete_pod = "deletePod"
    notify = "notify"


class TargetKind(StrEnum):
    pod = "Pod"
    deployment = "Deployment"
    stateful_set = "StatefulSet"
    daemon_set = "DaemonSet"
    replica_set = "ReplicaSet"
    job = "Job"
    node = "Node"


# --- ResponsePlaybook -----------------------------------------------------------


class LabelSelectorRequirement(Model):
    """A label selector requirement (as in metav1.LabelSelectorRequirement)."""

    key: str = Field(description="The label key the requirement applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key relates to the values.")
    values: list[str] | None = Field(
        default=None, description="Values for In and NotIn; empty for Exists and DoesNotExist.")


class LabelSelector(Model):
    """Selects by labels, as in metav1.LabelSelector."""

    match_labels: dict[str, str] | None = Field(
        default=None, description="Labels that must all be present with these values.")
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, description="Requirements that must all hold.")


class PlaybookMatch(Model):
    """Which incidents a playbook answers. Every field given must match; an empty match
    answers every incident it is allowed to see."""

    sources: list[Source] | None = Field(
        default=None, description="Signal sources answered; all when empty.")
    severity: Severity | None = Field(
        default=None, description="Minimum severity answered (this one and above).")
    alert_names: list[str] | None = Field(
        default=None, description="Alert or rule names answered (spec.alertName of the incident).")
    label_selector: LabelSelector | None = Field(
        default=None, description="Selector over the incident's spec.labels.")
    namespaces: list[str] | None = Field(
        default=None, description="Target namespaces answered; all permitted ones when empty.")


class OnFailure(StrEnum):
    abort = "abort"
    continue_ = "continue"


DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class SecretRef(Model):
    """A Secret in the operator's own namespace."""

    name: str = Field(description="Name of the Secret.", pattern=DNS_SUBDOMAIN, max_length=253)


class NotificationFormat(StrEnum):
    json = "json"
    slack = "slack"


# The ${...} placeholders of notification messages and bodies; ${message} (the message,
# rendered) only in a body. Their values: firebreak.notifications.variables.
PLACEHOLDERS = ("incident", "namespace", "name", "severity", "title", "source", "alertName",
                "target", "playbook", "phase", "event", "detail", "time", "message")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def template_problem(message: str | None, body: dict[str, Any] | None) -> str | None:
    """What is wrong with a notification's templates, or None."""
    for text, known in [*((m, PLACEHOLDERS[:-1]) for m in [message] if m is not None),
                        *((b, PLACEHOLDERS) for b in _strings(body))]:
        template = Template(text)
        if not template.is_valid():
            return f"{text!r} is not a valid template: write $$ for a dollar sign"
        unknown = sorted(set(template.get_identifiers()) - set(known))
        if unknown:
            return (f"{text!r} uses unknown placeholders {', '.join(unknown)}; known: "
                    f"{', '.join(known)}")
    return None


class StepParams(Model):
    """The parameters of every action, each valid for the actions its description names
    (``PARAMS_OF``). Strict: ``"no"`` is not a boolean and ``"3"`` not a number."""

    model_config = ConfigDict(strict=True)

    scope: Literal["pod", "workload"] | None = Field(
        default=None,
        description="isolateNetwork, deletePod: pod acts on the target pod (default); "
                    "workload on every pod of its workload.")
    allow_dns: bool | None = Field(
        default=None, alias="allowDNS",
        description="isolateNetwork: allow egress to the cluster DNS service (default true).")
    dns_namespace: str | None = Field(
        default=None, pattern=DNS_LABEL, max_length=63,
        description="isolateNetwork: namespace of the cluster DNS pods (default kube-system).")
    dns_selector: dict[str, str] | None = Field(
        default=None,
        description="isolateNetwork: labels of the cluster DNS pods (default k8s-app: kube-dns).")
    forensics_namespace: str | None = Field(
        default=None, pattern=DNS_LABEL, max_length=63,
        description="isolateNetwork: allow ingress from pods in this namespace (for "
                    "investigators' tools).")
    detach: bool | None = Field(
        default=None,
        description="isolateNetwork: take the pods out of their ReplicaSet so a replacement "
                    "starts (default false).")
    replicas: int | None = Field(
        default=None, ge=0, description="scaleDown: the replica count to scale to (default 0).")
    storage: Literal["secret", "configMap"] | None = Field(
        default=None,
        description="snapshot: write the evidence as Secrets (default; logs may hold "
                    "credentials) or ConfigMaps.")
    tail_lines: int | None = Field(
        default=None, ge=1, le=100_000,
        description="snapshot: lines kept from the end of each container log (default 500).")
    max_pods: int | None = Field(
        default=None, ge=1, le=500,
        description="snapshot: most pods collected for a workload target (default 20).")
    volume_snapshot_class_name: str | None = Field(
        default=None, min_length=1,
        description="snapshot: VolumeSnapshotClass of the volume snapshots (default: the "
                    "cluster's).")
    labels: dict[str, str] | None = Field(
        default=None, description="label (required): labels to set on the target object.")
    grace_period_seconds: int | None = Field(
        default=None, ge=0,
        description="deletePod: seconds the containers get to stop (default: the pod's own).")
    secret_ref: SecretRef | None = Field(
        default=None,
        description="notify (required): the Secret in the operator's namespace holding the "
                    "receiver's url (and, optionally, a bearer token).")
    format: Literal["json", "slack"] | None = Field(
        default=None,
        description="notify: json posts the body (default); slack posts a Slack incoming-"
                    "webhook message.")
    message: str | None = Field(
        default=None, min_length=1, max_length=4096,
        description="notify: the message, with ${...} placeholders (default: a one-line "
                    "summary of the incident).")
    body: dict[str, Any] | None = Field(
        default=None,
        description="notify, json format: the JSON body to post, each string in it with "
                    "${...} placeholders (default: the incident's summary).")

    @model_validator(mode="after")
    def _templates(self) -> StepParams:
        problem = template_problem(self.message, self.body)
        if problem is not None:
            raise ValueError(problem)
        return self


# Which parameters each action takes (by their API names). The CRD's rules, these
# models and each action's own parameter model agree (tests/unit/test_crd_schema.py).
PARAMS_OF: dict[ActionName, frozenset[str]] = {
    ActionName.isolate_network: frozenset({"scope", "allowDNS", "dnsNamespace", "dnsSelector",
                                           "forensicsNamespace", "detach"}),
    ActionName.cordon_node: frozenset(),
    ActionName.scale_down: frozenset({"replicas"}),
    ActionName.snapshot: frozenset({"storage", "tailLines", "maxPods",
                                    "volumeSnapshotClassName"}),
    ActionName.label: frozenset({"labels"}),
    ActionName.delete_pod: frozenset({"scope", "gracePeriodSeconds"}),
    ActionName.notify: frozenset({"secretRef", "format", "message", "body"}),
}
# What a failed step does when the playbook does not say (PlaybookStep.on_failure).
DEFAULT_ON_FAILURE: dict[ActionName, OnFailure] = {ActionName.notify: OnFailure.continue_}
REQUIRED_PARAMS: dict[ActionName, frozenset[str]] = {
    ActionName.label: frozenset({"labels"}),
    ActionName.notify: frozenset({"secretRef"}),
}


class PlaybookStep(Model):
    """One step of a playbook: an action with its parameters."""

    name: str = Field(description="Unique name of the step within the playbook.",
                      min_length=1, max_length=63)
    action: ActionName = Field(description="The action to run.")
    params: StepParams | None = Field(
        default=None, description="Parameters of the action; each names the actions it "
                                  "applies to.")
    on_failure: OnFailure | None = Field(
        default=None,
        description="abort stops the playbook at a failed step; continue goes on to the next. "
                    "Default: abort, but continue for notify (an undelivered notification "
                    "never holds back containment unless the playbook says so).")

    @model_validator(mode="after")
    def _params_fit_the_action(self) -> PlaybookStep:
        # The same rules as the CRD's x-kubernetes-validations on a step.
        given = set(self.params.to_api()) if self.params is not None else set()
        foreign = sorted(given - PARAMS_OF[self.action])
        if foreign:
            raise ValueError(f"params {', '.join(foreign)} do not apply to "
                             f"{self.action.value}")
        missing = sorted(REQUIRED_PARAMS.get(self.action, frozenset()) - given)
        if missing:
            raise ValueError(f"{self.action.value} needs params {', '.join(missing)}")
        return self


class PlaybookMode(StrEnum):
    enforce = "enforce"
    dry_run = "dryRun"


class ApprovalPolicy(StrEnum):
    automatic = "automatic"
    manual = "manual"


class ApprovalTimeoutAction(StrEnum):
    reject = "reject"
    approve = "approve"


class PlaybookApproval(Model):
    """Whether a person must approve before any step runs."""

    policy: ApprovalPolicy = Field(
        default=ApprovalPolicy.automatic,
        description="automatic runs the steps at once; manual waits for spec.approval on the incident.")
    timeout_seconds: int = Field(
        default=3600, ge=1, description="How long to wait for a decision under the manual policy.")
    on_timeout: ApprovalTimeoutAction = Field(
        default=ApprovalTimeoutAction.reject,
        description="What happens when nobody decided in time.")


class ReleasePolicy(StrEnum):
    manual = "manual"
    on_signal_resolved = "onSignalResolved"


class PlaybookBudget(Model):
    """How many incidents this playbook may begin answering per minute."""

    per_minute: int = Field(
        ge=1, le=100000,
        description="Beyond this many incidents begun in the last minute, the next one waits "
                    "(phase Throttled) until a slot frees.")


class NotificationEvent(StrEnum):
    """The transitions of an incident a playbook can ask to be told about."""

    awaiting_approval = "AwaitingApproval"
    contained = "Contained"
    isolation_defeated = "IsolationDefeated"
    failed = "Failed"
    resolved = "Resolved"


class PlaybookNotification(Model):
    """A receiver told about the incidents' transitions."""

    name: str = Field(description="Unique name of the notification within the playbook.",
                      min_length=1, max_length=63)
    events: list[NotificationEvent] = Field(
        description="The transitions announced.", min_length=1)
    secret_ref: SecretRef = Field(
        description="The Secret in the operator's namespace holding the receiver's url (and, "
                    "optionally, a bearer token).")
    format: NotificationFormat = Field(
        default=NotificationFormat.json,
        description="json posts the body; slack posts a Slack incoming-webhook message.")
    message: str | None = Field(
        default=None, min_length=1, max_length=4096,
        description="The message, with ${...} placeholders (default: a one-line summary of "
                    "the transition).")
    body: dict[str, Any] | None = Field(
        default=None,
        description="json format: the JSON body to post, each string in it with ${...} "
                    "placeholders (default: the incident's summary).")

    @model_validator(mode="after")
    def _templates(self) -> PlaybookNotification:
        problem = template_problem(self.message, self.body)
        if problem is not None:
            raise ValueError(problem)
        return self


class ResponsePlaybookSpec(Model):
    """How to answer the incidents a playbook matches."""

    match: PlaybookMatch = Field(
        default_factory=PlaybookMatch, description="Which incidents this playbook answers.")
    priority: int = Field(
        default=0, description="Among matching playbooks the highest priority wins; ties by name.")
    mode: PlaybookMode = Field(
        default=PlaybookMode.enforce,
        description="enforce runs the steps; dryRun records the plan and changes nothing.")
    approval: PlaybookApproval = Field(
        default_factory=PlaybookApproval, description="Whether a person must approve first.")
    release: ReleasePolicy = Field(
        default=ReleasePolicy.manual,
        description="How containment ends: manual (spec.resolution) or when the signal resolves.")
    budget: PlaybookBudget | None = Field(
        default=None,
        description="A limit against floods, besides the operator's cluster-wide one.")
    steps: list[PlaybookStep] = Field(
        description="The steps, run in order.", min_length=1, max_length=32)
    notifications: list[PlaybookNotification] | None = Field(
        default=None, max_length=8,
        description="Receivers told when an incident awaits approval, is contained, has its "
                    "isolation defeated, fails or is resolved.")

    @model_validator(mode="after")
    def _notification_names_are_unique(self) -> ResponsePlaybookSpec:
        # The same rule as the CRD's: deliveries are recorded by notification name.
        names = [n.name for n in self.notifications or ()]
        if len(names) != len(set(names)):
            raise ValueError("notification names must be unique within a playbook")
        return self


class ResponsePlaybookStatus(Model):
    """Whether the playbook can answer incidents."""

    observed_generation: int | None = Field(
        default=None, description="The spec generation last checked.")
    conditions: list[Condition] | None = Field(
        default=None, description="Ready: the playbook is valid and takes part in matching.")


# --- SecurityIncident -------------------------------------------------------------


class Target(Model):
    """The object an incident is about."""

    kind: TargetKind = Field(description="Kind of the target object.")
    namespace: str | None = Field(
        default=None, description="Namespace of the target; empty for a Node.")
    name: str = Field(description="Name of the target object.", min_length=1)

    @model_validator(mode="after")
    def _namespace_matches_kind(self) -> Target:
        # The same rules as the CRD's CEL validations.
        if self.kind is TargetKind.node and self.namespace:
            raise ValueError("a Node target has no namespace")
        if self.kind is not TargetKind.node and not self.namespace:
            raise ValueError(f"a {self.kind.value} target needs a namespace")
        return self


class ObjectRef(Model):
    """A reference to a namespaced object of a known kind."""

    name: str = Field(description="Name of the object.")
    namespace: str | None = Field(default=None, description="Namespace of the object.")


class ApprovalDecision(StrEnum):
    approve = "approve"
    reject = "reject"


class Approval(Model):
    """A person's decision on a playbook that asks for approval."""

    decision: ApprovalDecision = Field(description="approve runs the steps; reject runs none.")
    by: str | None = Field(default=None, description="Who decided.")
    reason: str | None = Field(default=None, description="Why.")


class Resolution(Model):
    """Ends the incident: every applied, revertible step is reverted."""

    reason: str = Field(description="Why the incident is over.", min_length=1)
    by: str | None = Field(default=None, description="Who (or what) resolved it.")


class SecurityIncidentSpec(Model):
    """The signal that raised the incident and what people decided about it."""

    source: Source = Field(description="The system that raised the signal.")
    fingerprint: str | None = Field(
        default=None, description="Stable identity of the signal, used to deduplicate.")
    severity: Severity = Field(description="How bad it is.")
    title: str = Field(description="One-line summary.", min_length=1)
    description: str | None = Field(default=None, description="Details from the source.")
    alert_name: str | None = Field(
        default=None, description="Alert or rule name of the signal (matched by playbooks).")
    target: Target | None = Field(default=None, description="The object the incident is about.")
    labels: dict[str, str] | None = Field(
        default=None, description="Labels of the signal (matched by playbook label selectors).")
    playbook_ref: ObjectRef | None = Field(
        default=None, description="Use this playbook instead of matching one.")
    approval: Approval | None = Field(
        default=None, description="Decision on a playbook that needs approval.")
    resolution: Resolution | None = Field(
        default=None, description="Set to end the incident and revert what can be reverted.")


class ConditionStatus(StrEnum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(Model):
    """A Kubernetes API convention condition."""

    type: str = Field(description="Type of condition in CamelCase.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: AwareDatetime = Field(
        description="When the status last changed.")
    observed_generation: int | None = Field(
        default=None, description="The spec generation the condition was computed from.")


class Phase(StrEnum):
    pending = "Pending"
    triaging = "Triaging"
    awaiting_approval = "AwaitingApproval"
    containing = "Containing"
    contained = "Contained"
    recovering = "Recovering"
    resolved = "Resolved"
    failed = "Failed"
    suppressed = "Suppressed"
    throttled = "Throttled"


class StepState(StrEnum):
    pending = "Pending"
    running = "Running"
    applied = "Applied"
    planned = "Planned"
    refused = "Refused"
    failed = "Failed"
    skipped = "Skipped"
    reverting = "Reverting"
    reverted = "Reverted"
    revert_failed = "RevertFailed"


class ObjectReference(Model):
    """An object a step acted on (or would act on)."""

    kind: str = Field(description="Kind of the object.")
    namespace: str | None = Field(default=None, description="Namespace of the object.")
    name: str = Field(description="Name of the object.")


class EvidenceItem(Model):
    """One item of evidence and its digest."""

    key: str = Field(description="The key of the item in its object.")
    sha256: str = Field(description="SHA-256 of the item's bytes, in hex.",
                        pattern=r"^[0-9a-f]{64}$")


class EvidenceStored(Model):
    """An evidence object a step wrote, and the digest of every item in it."""

    kind: str = Field(description="Secret or ConfigMap.")
    namespace: str = Field(description="Namespace of the object (the operator's).")
    name: str = Field(description="Name of the object.")
    items: list[EvidenceItem] = Field(description="Every item of the object, with its digest.")


class ActionStatus(Model):
    """The state of one playbook step on this incident."""

    step: str = Field(description="Name of the step in the playbook.")
    action: ActionName = Field(description="The action of the step.")
    state: StepState = Field(description="Where the step is.")
    params: dict[str, Any] | None = Field(
        default=None, description="The step's parameters, as the playbook gave them at triage.")
    on_failure: OnFailure = Field(
        default=OnFailure.abort, description="What a failure of this step does to the rest.")
    started_at: AwareDatetime | None = Field(default=None, description="When the step started.")
    finished_at: AwareDatetime | None = Field(default=None, description="When the step finished.")
    message: str | None = Field(default=None, description="What happened, or would happen.")
    objects: list[ObjectReference] | None = Field(
        default=None, description="Objects the step acted on (or would act on).")
    warnings: list[str] | None = Field(
        default=None, description="Things a person should know, such as other policies that "
                                  "still allow traffic to quarantined pods.")
    revert: dict[str, Any] | None = Field(
        default=None, description="What the step recorded to undo itself; absent when it "
                                  "cannot be undone.")
    evidence: list[EvidenceStored] | None = Field(
        default=None, description="The evidence objects the step wrote, with the SHA-256 of "
                                  "every item: what `firebreak evidence verify` checks.")


class TimelineEntry(Model):
    """One event in the incident's history."""

    time: AwareDatetime = Field(description="When it happened.")
    reason: str = Field(description="CamelCase reason, as on the matching Kubernetes Event.")
    message: str = Field(description="What happened.")


class DeliveryState(StrEnum):
    sent = "Sent"
    failed = "Failed"


class Delivery(Model):
    """A transition announced to one of the playbook's notifications."""

    notification: str = Field(description="Name of the playbook's notification.")
    event: NotificationEvent = Field(description="The transition announced.")
    since: AwareDatetime = Field(description="When the transition happened.")
    state: DeliveryState = Field(description="Sent, or Failed after every attempt.")
    time: AwareDatetime = Field(description="When the last attempt ended.")
    attempts: int = Field(description="How many attempts were made.", ge=1)
    message: str = Field(default="", description="The receiver's answer, or why it failed.")


class SecurityIncidentStatus(Model):
    """What Firebreak observed and did."""

    phase: Phase | None = Field(
        default=None, description="Summary for display, derived from the conditions.")
    observed_generation: int | None = Field(
        default=None, description="The spec generation last reconciled.")
    conditions: list[Condition] | None = Field(
        default=None, description="Triaged, Approved, Contained, Resolved.")
    playbook: ObjectRef | None = Field(default=None, description="The playbook answering.")
    mode: PlaybookMode | None = Field(
        default=None, description="The mode of the playbook when it was chosen.")
    approval: PlaybookApproval | None = Field(
        default=None, description="The playbook's approval policy when it was chosen, fixed "
                                  "for this response.")
    actions: list[ActionStatus] | None = Field(
        default=None, description="Every step of the playbook and its state, in order.")
    timeline: list[TimelineEntry] | None = Field(default=None, description="History, oldest first.")
    signal_count: int | None = Field(default=None, description="How many times the signal arrived.")
    first_seen: AwareDatetime | None = Field(default=None, description="First arrival of the signal.")
    last_seen: AwareDatetime | None = Field(default=None, description="Latest arrival of the signal.")
    signal_times: list[str] | None = Field(
        default=None, max_length=16,
        description="Times of the latest signals counted (at most 16): a delivery of a signal "
                    "already counted is not counted again.")
    time_to_contain_seconds: float | None = Field(
        default=None, description="Seconds from the first signal until every step was applied.")
    notifications: list[PlaybookNotification] | None = Field(
        default=None, description="The playbook's notifications when it was chosen, fixed "
                                  "for this response.")
    deliveries: list[Delivery] | None = Field(
        default=None, description="Transitions announced to the notifications, oldest first "
                                  "(the latest 50).")


ResponsePlaybookStatus.model_rebuild()
