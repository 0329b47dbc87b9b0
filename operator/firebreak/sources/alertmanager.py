"""Alertmanager's webhook body, validated, and the signals it carries.

Alertmanager is how most clusters already route alerts, so its webhook is the
main door into Firebreak: kube-prometheus alerts arrive this way, and so do Falco
events that Falcosidekick forwards to Alertmanager. The body is checked strictly
(a malformed delivery is refused with pydantic's errors rather than half-read)
while fields added by newer Alertmanager releases are let through.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from ..api import Source
from .signal import (
    Signal,
    SignalStatus,
    labels_fingerprint,
    severity_from,
    target_from_labels,
)

AlertStatus = Literal["firing", "resolved"]


class _Wire(BaseModel):
    # extra="allow": Alertmanager has added fields over time (truncatedAlerts in
    # 0.23) and a newer release must not be refused for adding another.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True)


class AlertmanagerAlert(_Wire):
    """One alert of a webhook notification."""

    status: AlertStatus
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: AwareDatetime | None = None
    # "0001-01-01T00:00:00Z" while firing: Go's zero time, a valid timestamp.
    ends_at: AwareDatetime | None = None
    generator_url: str | None = Field(default=None, alias="generatorURL")
    fingerprint: str | None = None


class AlertmanagerPayload(_Wire):
    """A webhook notification (version 4) for one alert group.

    ``version``, ``groupKey`` and ``truncatedAlerts`` are optional: bodies from older
    releases (and from tools that replay them) do not carry them.
    """

    version: str | None = None
    group_key: str | None = None
    truncated_alerts: int | None = Field(default=None, ge=0, strict=True)
    status: AlertStatus
    receiver: str
    group_labels: dict[str, str] = Field(default_factory=dict)
    common_labels: dict[str, str] = Field(default_factory=dict)
    common_annotations: dict[str, str] = Field(default_factory=dict)
    external_url: str | None = Field(default=None, alias="externalURL")
    alerts: list[AlertmanagerAlert] = Field(min_length=1)


def _first(mapping: dict[str, str], *keys: str) -> str | None:
    for key in keys:
        if value := mapping.get(key, "").strip():
            return value
    return None


def signal_from_alert(alert: AlertmanagerAlert) -> Signal:
    """The signal for one alert of a notification."""
    labels = alert.labels
    alert_name = _first(labels, "alertname")
    # Alertmanager's fingerprint is a hash of the label set, the same in every
    # delivery; without one (hand-made bodies) the labels stand in for it.
    fingerprint = (alert.fingerprint or "").strip() or labels_fingerprint(labels)
    # Falcosidekick sets both `severity` and Falco's `priority`; other senders set
    # either. An unknown word in one falls back to the other.
    severity = severity_from(labels.get("severity"), default=severity_from(labels.get("priority")))
    return Signal(
        source=Source.alertmanager,
        fingerprint=fingerprint,
        status=SignalStatus(alert.status),
        severity=severity,
        title=_first(alert.annotations, "summary") or alert_name or "Alertmanager alert",
        description=_first(alert.annotations, "description", "message"),
        alert_name=alert_name,
        target=target_from_labels(labels),
        labels=dict(labels),
        time=alert.starts_at,
    )


def signals_from_alertmanager(payload: AlertmanagerPayload) -> list[Signal]:
    """One signal per alert, each with its own status (a group mixes both)."""
    return [signal_from_alert(alert) for alert in payload.alerts]
