"""Firebreak's own signal shape, for every scanner and script that is not a known source.

Grype, Kubescape, kube-bench or an in-house check post this to ``/signals`` rather
than impersonate Alertmanager. The shape is the ``Signal`` every source produces,
on the wire in camelCase, with one difference: ``source`` names the sender (free
text, kept in the label ``source``), while the incident's ``spec.source`` is
``external``, so a playbook that answers only Falco is never triggered by a script
that calls itself "falco". The JSON Schema served at ``/signals/schema`` is
generated from the model below, so it cannot drift from what is accepted.
"""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from ..api import Severity, Source, Target
from .signal import Signal, SignalStatus

SENDER_LABEL = "source"


class ExternalSignal(BaseModel):
    """A signal from any scanner or script: one incident per sender and fingerprint."""

    # Only the camelCase names the schema documents: "alert_name" is refused, not
    # quietly taken, so what a sender reads in the schema is all that works.
    model_config = ConfigDict(
        alias_generator=to_camel, extra="forbid", frozen=True, title="Signal")

    source: str = Field(
        min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="The sender's name (grype, kubescape, kube-bench...). Kept in the "
                    "incident's label 'source'; the incident's spec.source is 'external'.")
    fingerprint: str = Field(
        min_length=1,
        description="Stable identity of what was found: the same sender and fingerprint "
                    "update one incident, a new one opens another.")
    status: SignalStatus = Field(
        default=SignalStatus.firing,
        description="firing, or resolved when the finding is gone.")
    severity: Severity = Field(description="How bad it is.")
    title: str = Field(min_length=1, description="One-line summary (cut at 1 KiB).")
    description: str | None = Field(default=None, description="Details (cut at 8 KiB).")
    alert_name: str | None = Field(
        default=None,
        description="Rule or check ID, matched by playbooks' match.alertNames.")
    target: Target | None = Field(
        default=None,
        description="The object the finding is about; without one the incident is "
                    "recorded for people, with nothing to act on.")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Matched by playbooks' match.labelSelector (at most 62, 16 KiB).")
    time: AwareDatetime | None = Field(
        default=None,
        description="When it was found; a delivery with the same fingerprint and time is "
                    "not counted twice.")


def signal_schema() -> dict[str, Any]:
    """The JSON Schema of what ``POST /signals`` accepts, as sent on the wire."""
    return ExternalSignal.model_json_schema(by_alias=True)


def signal_from_external(posted: ExternalSignal) -> Signal:
    """The signal a posted ``ExternalSignal`` raises."""
    return Signal(
        source=Source.external,
        # Two senders using the same fingerprint are two findings.
        fingerprint=f"{posted.source}/{posted.fingerprint}",
        status=posted.status,
        severity=posted.severity,
        title=posted.title,
        description=posted.description,
        alert_name=posted.alert_name,
        target=posted.target,
        labels={**posted.labels, SENDER_LABEL: posted.source},
        time=posted.time,
    )
