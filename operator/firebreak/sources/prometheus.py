"""Firing alerts read from Prometheus directly, as signals.

Where no Alertmanager routes to Firebreak, the operator polls Prometheus with an
instant query (``ALERTS{alertstate="firing"}`` by default, or a configured PromQL
expression) and turns each returned series into a signal. A series has no
identity of its own across polls, so the fingerprint is derived from its labels:
the same series on the next poll lands on the same incident.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictStr

from ..api import Source
from .signal import Signal, labels_fingerprint, severity_from, target_from_labels

DEFAULT_NAME = "PrometheusQuery"

# Labels that describe the query result rather than the alert: `__name__` is
# "ALERTS" for every alert, and `alertstate` would change pending → firing.
_DROPPED = ("__name__", "alertstate")


class _Sample(BaseModel):
    """One series of an instant-vector result: ``{"metric": {...}, "value": [ts, "v"]}``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    metric: dict[str, StrictStr]
    value: tuple[float, StrictStr]


def _signal(sample: _Sample) -> Signal | None:
    metric = sample.metric
    # A pending alert has not fired yet (its `for` has not elapsed); only a query
    # without the alertstate matcher returns these.
    if metric.get("alertstate") == "pending":
        return None
    labels = {key: value for key, value in metric.items() if key not in _DROPPED}
    alert_name = metric.get("alertname") or metric.get("__name__") or DEFAULT_NAME
    identity = labels
    if "alertname" not in labels:
        # A configured query's series carry no alertname; without the series name
        # two queries returning the same label set would share one incident.
        identity = {**labels, "__name__": alert_name}
    return Signal(
        source=Source.prometheus,
        fingerprint=labels_fingerprint(identity),
        severity=severity_from(labels.get("severity")),
        title=alert_name,
        alert_name=alert_name,
        target=target_from_labels(labels),
        labels=labels,
        # The evaluation time of the query: when this poll saw the series.
        time=dt.datetime.fromtimestamp(sample.value[0], tz=dt.UTC),
    )


def signals_from_alerts_query(result: Sequence[Any]) -> list[Signal]:
    """Signals for the series of an instant query result (prometheus-api-client's
    ``custom_query``). Raises pydantic's ``ValidationError`` on a malformed series."""
    samples = [_Sample.model_validate(item) for item in result]
    return [signal for sample in samples if (signal := _signal(sample)) is not None]
