"""Choosing the playbook that answers an incident: a pure function over data.

Tenancy comes first: a playbook in the operator's own namespace may answer an
incident in any namespace; a playbook anywhere else answers only incidents whose
target (or, without a target, the incident itself) lives in its namespace. Among
the playbooks allowed and matching, the highest ``priority`` wins and ties go to
the first by namespace and name, so the choice never depends on listing order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .api import PlaybookMatch, ResponsePlaybookSpec, SecurityIncidentSpec
from .selectors import selects


@dataclass(frozen=True)
class PlaybookCandidate:
    namespace: str
    name: str
    spec: ResponsePlaybookSpec


def incident_scope(incident: SecurityIncidentSpec, incident_namespace: str) -> str:
    """The namespace an incident is about: its target's, else its own."""
    if incident.target is not None and incident.target.namespace:
        return incident.target.namespace
    return incident_namespace


def allowed(
    playbook_namespace: str, incident: SecurityIncidentSpec, incident_namespace: str,
    operator_namespace: str,
) -> bool:
    """Whether a playbook in ``playbook_namespace`` may answer this incident at all."""
    if playbook_namespace == operator_namespace:
        return True
    return (playbook_namespace == incident_namespace
            and incident_scope(incident, incident_namespace) == playbook_namespace)


def matches(match: PlaybookMatch, incident: SecurityIncidentSpec, incident_namespace: str) -> bool:
    if match.sources and incident.source not in match.sources:
        return False
    if match.severity is not None and incident.severity.rank < match.severity.rank:
        return False
    if match.alert_names and incident.alert_name not in match.alert_names:
        return False
    if match.label_selector is not None and not selects(
        match.label_selector.to_api(), incident.labels or {}
    ):
        return False
    return not (
        match.namespaces
        and incident_scope(incident, incident_namespace) not in match.namespaces
    )


def select_playbook(
    incident: SecurityIncidentSpec,
    incident_namespace: str,
    playbooks: Iterable[PlaybookCandidate],
    operator_namespace: str,
) -> PlaybookCandidate | None:
    """The playbook that answers the incident, or None when none may and does."""
    eligible = [
        p for p in playbooks
        if allowed(p.namespace, incident, incident_namespace, operator_namespace)
        and matches(p.spec.match, incident, incident_namespace)
    ]
    if not eligible:
        return None
    return min(eligible, key=lambda p: (-p.spec.priority, p.namespace, p.name))
