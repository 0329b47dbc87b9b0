"""The responder's commands: list incidents, show one as a timeline, approve, reject,
resolve, and verify its evidence, as the person running them.

Every request carries the user's own kubeconfig identity, so the API server records
who did what (audit log, managedFields) and the admission policy
``firebreak-approvals`` can hold ``spec.approval.by`` and ``spec.resolution.by`` to
that identity. The name written there is the one the API server knows the user by,
asked of it with a SelfSubjectReview, never a name the user types.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from kubernetes import client, config

from . import evidence
from .api import (
    GROUP,
    INCIDENT_PLURAL,
    VERSION,
    EvidenceStored,
    SecurityIncidentSpec,
    SecurityIncidentStatus,
    signal_fields,
)
from .kube import ApiError, Kube, NotFound, call, raw

RETRY_SECONDS = 5.0
# Phases in which a decision still matters: before the playbook was chosen, or waiting.
UNDECIDED = {None, "Pending", "Triaging", "AwaitingApproval"}


class CommandError(Exception):
    """The command cannot do what was asked; the message says why."""


@dataclass
class Session:
    """The user's connection: their kubeconfig, their context, their default namespace."""

    kube: Kube
    namespace: str
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    @classmethod
    def connect(cls, kubeconfig: str | None, context: str | None,
                namespace: str | None) -> Session:
        try:
            api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        except (config.ConfigException, OSError) as exc:
            raise CommandError(f"cannot load the kubeconfig: {exc}") from exc
        if context is not None:
            contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
            active = next((c for c in contexts if c["name"] == context), active)
        default = (active or {}).get("context", {}).get("namespace") or "default"
        return cls(Kube(api_client), namespace or default)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return call(fn, *args, retry_for=RETRY_SECONDS, **kwargs)
        except NotFound as exc:
            raise CommandError(str(exc)) from exc
        except ApiError as exc:
            raise CommandError(f"the API server refused: {exc}") from exc

    def whoami(self) -> str:
        """The user's name as the API server knows it."""
        review = self._call(client.AuthenticationV1Api(self.kube.api_client)
                            .create_self_subject_review,
                            client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1",
                                                       kind="SelfSubjectReview"))
        name = review.status.user_info.username if review.status and review.status.user_info \
            else None
        if not name:
            raise CommandError("the API server did not say who you are (SelfSubjectReview)")
        return str(name)

    def incident(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self._call(self.kube.custom.get_namespaced_custom_object,
                                           GROUP, VERSION, self.namespace, INCIDENT_PLURAL,
                                           name)
        return found

    def incidents(self, all_namespaces: bool) -> list[dict[str, Any]]:
        if all_namespaces:
            listed = self._call(self.kube.custom.list_cluster_custom_object,
                                GROUP, VERSION, INCIDENT_PLURAL)
        else:
            listed = self._call(self.kube.custom.list_namespaced_custom_object,
                                GROUP, VERSION, self.namespace, INCIDENT_PLURAL)
        items: list[dict[str, Any]] = listed.get("items") or []
        return sorted(items, key=lambda i: (i["metadata"]["namespace"],
                                            i["metadata"].get("creationTimestamp") or "",
                                            i["metadata"]["name"]))

    def _patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self._call(self.kube.custom.patch_namespaced_custom_object,
                                             GROUP, VERSION, self.namespace, INCIDENT_PLURAL,
                                             name, {"spec": spec})
        return patched

    def decide(self, name: str, decision: str, reason: str | None) -> str:
        """Approve or reject, in the user's name; what was recorded, as a sentence."""
        body = self.incident(name)
        phase = (body.get("status") or {}).get("phase")
        if phase not in UNDECIDED:
            raise CommandError(f"incident {self.namespace}/{name} is {phase}: there is "
                               f"nothing to {decision} any more")
        if (body.get("spec") or {}).get("approval"):
            given = body["spec"]["approval"]
            raise CommandError(f"incident {self.namespace}/{name} was already decided: "
                               f"{given.get('decision')} by {given.get('by') or 'someone'}")
        user = self.whoami()
        approval = {"decision": decision, "by": user, **({"reason": reason} if reason else {})}
        self._patch_spec(name, {"approval": approval})
        verb = "approved" if decision == "approve" else "rejected"
        return f"incident {self.namespace}/{name} {verb} by {user}"

    def resolve(self, name: str, reason: str) -> str:
        body = self.incident(name)
        given = (body.get("spec") or {}).get("resolution")
        if given:
            raise CommandError(f"incident {self.namespace}/{name} is already resolved: "
                               f"{given.get('reason')} (by {given.get('by') or 'someone'})")
        user = self.whoami()
        self._patch_spec(name, {"resolution": {"reason": reason, "by": user}})
        return (f"incident {self.namespace}/{name} resolved by {user}: its applied steps "
                f"are being reverted")

    def verify(self, name: str) -> tuple[list[EvidenceStored], list[evidence.Finding]]:
        """The incident's evidence record, and how the stored bundle differs from it."""
        status = _status(self.incident(name))
        recorded = [e for step in status.actions or () for e in step.evidence or ()]
        stored: dict[tuple[str, str, str], evidence.StoredObject | None] = {}
        for entry in recorded:
            stored[(entry.kind, entry.namespace, entry.name)] = self._stored(entry)
        return recorded, evidence.verify(recorded, stored)

    def _stored(self, entry: EvidenceStored) -> evidence.StoredObject | None:
        core = self.kube.core
        read = core.read_namespaced_secret if entry.kind == "Secret" \
            else core.read_namespaced_config_map
        try:
            obj = raw(read, entry.name, entry.namespace, retry_for=RETRY_SECONDS)
        except NotFound:
            return None
        except ApiError as exc:
            raise CommandError(f"cannot read {entry.kind} {entry.namespace}/{entry.name}: "
                               f"{exc}") from exc
        data = obj.get("data") or {}
        if entry.kind == "Secret":
            items = {k: base64.b64decode(v) for k, v in data.items()}
        else:
            items = {k: str(v).encode() for k, v in data.items()}
            items.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return evidence.StoredObject(immutable=obj.get("immutable") is True, items=items)


def _status(body: dict[str, Any]) -> SecurityIncidentStatus:
    known = {f.alias for f in SecurityIncidentStatus.model_fields.values() if f.alias}
    # The signal counts as they stand, those the creation implies included.
    return SecurityIncidentStatus.model_validate(
        {**{k: v for k, v in (body.get("status") or {}).items() if k in known},
         **signal_fields(body)})


# --- rendering ---------------------------------------------------------------------------


def when(time: dt.datetime | None) -> str:
    return time.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if time else "-"


def age(created: str | None, now: dt.datetime) -> str:
    if not created:
        return "-"
    seconds = int((now - dt.datetime.fromisoformat(created.replace("Z", "+00:00")))
                  .total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _target(spec: SecurityIncidentSpec) -> str:
    target = spec.target
    if target is None:
        return "-"
    return f"{target.kind.value} {target.namespace}/{target.name}" if target.namespace \
        else f"{target.kind.value} {target.name}"


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def render_list(items: Sequence[dict[str, Any]], now: dt.datetime) -> str:
    if not items:
        return "No incidents."
    rows = [["NAMESPACE", "NAME", "PHASE", "SEVERITY", "TARGET", "PLAYBOOK", "SIGNALS", "AGE"]]
    for item in items:
        meta, spec = item["metadata"], SecurityIncidentSpec.model_validate(item.get("spec"))
        status = _status(item)
        rows.append([meta["namespace"], meta["name"],
                     status.phase.value if status.phase else "Pending", spec.severity.value,
                     _target(spec), status.playbook.name if status.playbook else "-",
                     str(status.signal_count or 0), age(meta.get("creationTimestamp"), now)])
    return table(rows)


def render_incident(body: dict[str, Any]) -> str:
    meta, spec = body["metadata"], SecurityIncidentSpec.model_validate(body.get("spec"))
    status = _status(body)
    playbook = (f"{status.playbook.namespace}/{status.playbook.name}"
                + (f" ({status.mode.value})" if status.mode else "")) if status.playbook else "-"
    lines = [
        f"Incident {meta['namespace']}/{meta['name']}: {spec.title}",
        f"  Phase:     {status.phase.value if status.phase else 'Pending'}",
        f"  Severity:  {spec.severity.value}",
        f"  Source:    {spec.source.value}"
        + (f" ({spec.alert_name})" if spec.alert_name else ""),
        f"  Target:    {_target(spec)}",
        f"  Playbook:  {playbook}",
        f"  Signals:   {status.signal_count or 0} (first {when(status.first_seen)}, "
        f"last {when(status.last_seen)})",
    ]
    if status.time_to_contain_seconds is not None:
        lines.append(f"  Contained: {status.time_to_contain_seconds:g}s after the first signal")
    if spec.approval is not None:
        lines.append(f"  Decision:  {spec.approval.decision.value} by "
                     f"{spec.approval.by or '?'}"
                     + (f": {spec.approval.reason}" if spec.approval.reason else ""))
    if spec.resolution is not None:
        lines.append(f"  Resolved:  by {spec.resolution.by or '?'}: {spec.resolution.reason}")
    if status.conditions:
        lines += ["", "Conditions:"]
        lines += ["  " + line for line in table(
            [[c.type, c.status.value, c.reason, c.message] for c in status.conditions]
        ).splitlines()]
    if status.actions:
        lines += ["", "Steps:"]
        lines += ["  " + line for line in table(
            [[str(i), a.step, a.action.value, a.state.value, a.message or ""]
             for i, a in enumerate(status.actions, 1)]).splitlines()]
    if status.timeline:
        lines += ["", "Timeline (UTC):"]
        lines += [f"  {when(t.time)}  {t.reason}: {t.message}" for t in status.timeline]
    items = [e for a in status.actions or () for e in a.evidence or ()]
    if items:
        objects, count = evidence.counted(items)
        lines += ["", f"Evidence: {count} items in {objects} object(s), SHA-256 recorded: "
                      f"firebreak evidence verify {meta['name']} -n {meta['namespace']}"]
    return "\n".join(lines)


def render_verification(name: str, recorded: Sequence[EvidenceStored],
                        findings: Sequence[evidence.Finding], out: TextIO) -> int:
    """Print the outcome; the exit status (0: every item as recorded)."""
    objects, count = evidence.counted(recorded)
    if not recorded:
        print(f"{name}: no evidence is recorded in the incident's status", file=out)
        return 1
    if not findings:
        print(f"{name}: verified {count} items in {objects} object(s): every SHA-256 "
              f"matches the incident's record", file=out)
        return 0
    print(f"{name}: {len(findings)} problem(s) in {count} recorded items:", file=out)
    for finding in findings:
        print(f"  {finding}", file=out)
    return 1
