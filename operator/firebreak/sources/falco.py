"""Falco events, validated, and the signal each one raises.

Falco is where runtime threats show up first (a shell in a container, a write
below /etc, an exec through the API server), so Firebreak takes its events
directly: from Falco's ``http_output`` or from a Falcosidekick webhook, which
post the same JSON.

Two details of that JSON matter here. ``output_fields`` values are strings,
integers, floats, booleans, nulls or lists, and ``evt.time`` is a nanosecond
count above 2**53: going through a float would silently change it, so values are
validated without any numeric conversion. And unresolved fields arrive as null
or as the text ``<NA>``; neither names anything.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from ..api import Source, TargetKind
from .signal import Signal, fingerprint_of, severity_from, target_from_labels

# Strict types: a JSON integer stays an int (never a float), and nothing is
# coerced into a string that was not one.
FieldScalar = StrictStr | StrictInt | StrictFloat | StrictBool | None
FieldValue = FieldScalar | list[FieldScalar]

Priority = Literal[
    "Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug"]

# Falco prints priorities capitalised; Falcosidekick and hand-written tests also
# send them in lower case, and "info" is accepted for Informational.
_PRIORITIES: dict[str, str] = {
    **{p.lower(): p for p in get_args(Priority)},
    "info": "Informational",
}

_NOT_AVAILABLE = "<NA>"


class FalcoEvent(BaseModel):
    """One Falco alert as ``http_output`` or Falcosidekick posts it."""

    # extra="allow": newer Falco versions add top-level keys.
    model_config = ConfigDict(extra="allow", frozen=True)

    output: str
    priority: Priority
    rule: str = Field(min_length=1)
    time: AwareDatetime | None = None
    output_fields: dict[str, FieldValue] = Field(default_factory=dict)
    source: str | None = None
    tags: list[str] = Field(default_factory=list)
    hostname: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _fold_key_case(cls, data: Any) -> Any:
        # Falcosidekick and Falco Talon decode with Go's encoding/json, which
        # matches keys case-insensitively, so senders get away with "Rule".
        if not isinstance(data, dict):
            return data
        folded = dict(data)
        for key in data:
            if isinstance(key, str):
                name = key.lower()
                if name != key and name in cls.model_fields and name not in data:
                    folded[name] = folded.pop(key)
        return folded

    @field_validator("priority", mode="before")
    @classmethod
    def _canonical_priority(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _PRIORITIES.get(value.strip().lower(), value)
        return value


def label_key(field: str) -> str:
    """A Falco field name as a label name, the way Falcosidekick writes it
    (``k8s.ns.name`` becomes ``k8s_ns_name``)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", field)


def _text(value: FieldValue) -> str | None:
    """A field value as label text; None when Falco could not resolve it."""
    if value is None or value == _NOT_AVAILABLE:
        return None
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, list):
        parts = [text for item in value if (text := _text(item)) is not None]
        return ",".join(parts)
    return str(value)  # an int stays exact: str() of a Python int never rounds


# Only these fields name the object a Falco event is about; other fields (for
# example a hostname) name the Falco pod or the node, not something to contain.
_TARGET_FIELDS = (
    "k8s.ns.name", "k8s.pod.name",
    "ka.target.namespace", "ka.target.name", "ka.target.resource",
)


def signal_from_falco(event: FalcoEvent) -> Signal:
    """The signal for one Falco event."""
    fields = event.output_fields
    texts = {key: _text(value) for key, value in fields.items()}

    target = target_from_labels({key: texts.get(key) for key in _TARGET_FIELDS})
    namespace = target.namespace if target else None
    pod = target.name if target and target.kind is TargetKind.pod else None
    # Falco reports processes outside any container with container.id "host";
    # then the hostname tells one machine's events from another's.
    container = texts.get("container.id")
    where = container if container and container != "host" else event.hostname
    # The same rule firing again on the same container is the same incident.
    fingerprint = fingerprint_of(event.rule, namespace, pod, where)

    labels = {label_key(key): text for key, text in texts.items() if text is not None}
    # The event's own attributes win over an output field of the same name.
    labels["rule"] = event.rule
    labels["priority"] = event.priority
    if event.source:
        labels["source"] = event.source
    if event.hostname:
        labels["hostname"] = event.hostname
    if event.tags:
        labels["tags"] = ",".join(event.tags)

    return Signal(
        source=Source.falco,
        fingerprint=fingerprint,
        severity=severity_from(event.priority),
        title=event.rule,
        description=event.output or None,
        alert_name=event.rule,
        target=target,
        labels=labels,
        time=event.time,
    )
