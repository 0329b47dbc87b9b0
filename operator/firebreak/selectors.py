"""metav1.LabelSelector, evaluated and rendered: one implementation for the whole
operator (playbook matching, NetworkPolicy overlap checks, listing pods)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a label selector (API JSON form) selects these labels; an empty
    selector selects everything, as in Kubernetes."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.get("matchExpressions") or ():
        key, op, values = req["key"], req["operator"], set(req.get("values") or ())
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def to_query(selector: Mapping[str, Any] | None) -> str:
    """A label selector in the ``labelSelector`` query syntax."""
    if not selector:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for req in selector.get("matchExpressions") or ():
        op, key, values = req["operator"], req["key"], ",".join(req.get("values") or ())
        parts.append({
            "In": f"{key} in ({values})",
            "NotIn": f"{key} notin ({values})",
            "Exists": key,
            "DoesNotExist": f"!{key}",
        }[op])
    return ",".join(parts)
