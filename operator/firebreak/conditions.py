"""Conditions and the display phase, as pure functions.

One helper sets a condition the way the Kubernetes API conventions ask:
``lastTransitionTime`` moves only when ``status`` flips, ``observedGeneration`` is
stamped, the list keeps a stable order. The phase is derived from the conditions
last, for ``kubectl get`` only: no handler is ever triggered by it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from .api import Condition, ConditionStatus, Phase

TRIAGED = "Triaged"
APPROVED = "Approved"
CONTAINED = "Contained"
# Whether the quarantine holds: no traffic beyond its allowances, judged from the
# NetworkPolicies the operator sees. Contained is True only while this is.
ISOLATED = "Isolated"
RESOLVED = "Resolved"
ORDER = (TRIAGED, APPROVED, CONTAINED, ISOLATED, RESOLVED)

# Reasons (CamelCase, also used for Kubernetes Events).
PLAYBOOK_SELECTED = "PlaybookSelected"
NO_MATCHING_PLAYBOOK = "NoMatchingPlaybook"
NO_TARGET = "NoTarget"
TARGET_NOT_FOUND = "TargetNotFound"
INVALID_PLAYBOOK = "InvalidPlaybook"
PLAN_REFUSED = "PlanRefused"
APPROVAL_NOT_REQUIRED = "ApprovalNotRequired"
AWAITING_APPROVAL = "AwaitingApproval"
APPROVED_BY_PERSON = "ApprovedByPerson"
REJECTED_BY_PERSON = "RejectedByPerson"
PLAYBOOK_DELETED = "PlaybookDeleted"
APPROVAL_TIMED_OUT = "ApprovalTimedOut"
APPROVED_ON_TIMEOUT = "ApprovedOnTimeout"
NOT_STARTED = "NotStarted"
STEPS_RUNNING = "StepsRunning"
STEPS_APPLIED = "StepsApplied"
STEP_FAILED = "StepFailed"
DRY_RUN = "DryRun"
NOT_CONTAINED = "NothingApplied"
REVERTING = "Reverting"
REVERTED = "Reverted"
REVERT_FAILED = "RevertFailed"
ISOLATION_VERIFIED = "IsolationVerified"
ISOLATION_DEFEATED = "IsolationDefeated"
QUARANTINE_RESTORED = "QuarantineRestored"
BUDGET_EXHAUSTED = "BudgetExhausted"

# Reasons after which nothing will run: the incident ends without containment.
SUPPRESSING = {NO_MATCHING_PLAYBOOK, NO_TARGET, TARGET_NOT_FOUND, REJECTED_BY_PERSON,
               APPROVAL_TIMED_OUT, DRY_RUN, PLAYBOOK_DELETED}


def find(conditions: Sequence[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or () if c.type == type_), None)


def is_true(conditions: Sequence[Condition] | None, type_: str) -> bool:
    found = find(conditions, type_)
    return found is not None and found.status is ConditionStatus.true


def set_condition(
    conditions: Sequence[Condition] | None,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    now: dt.datetime,
    generation: int | None,
) -> list[Condition]:
    """Return the conditions with ``type_`` set; other conditions are kept as they are."""
    current = find(conditions, type_)
    transition = (
        current.last_transition_time
        if current is not None and current.status is status
        else now
    )
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    merged = {c.type: c for c in conditions or ()}
    merged[type_] = updated
    rank = {t: i for i, t in enumerate(ORDER)}
    return sorted(merged.values(), key=lambda c: (rank.get(c.type, len(ORDER)), c.type))


def derive_phase(conditions: Sequence[Condition] | None, resolution_requested: bool) -> Phase:
    """The one-word summary shown by ``kubectl get securityincidents``."""
    triaged = find(conditions, TRIAGED)
    approved = find(conditions, APPROVED)
    contained = find(conditions, CONTAINED)
    resolved = find(conditions, RESOLVED)

    if resolved is not None:
        if resolved.status is ConditionStatus.true:
            return Phase.resolved
        if resolved.reason == REVERT_FAILED:
            return Phase.failed
        return Phase.recovering
    if resolution_requested:
        return Phase.recovering
    if triaged is None:
        return Phase.pending
    if triaged.status is ConditionStatus.unknown:
        return Phase.triaging
    if triaged.status is ConditionStatus.false:
        return Phase.suppressed if triaged.reason in SUPPRESSING else Phase.failed
    if approved is not None and approved.status is not ConditionStatus.true:
        if approved.reason in SUPPRESSING:
            return Phase.suppressed
        return Phase.awaiting_approval
    if contained is None:
        return Phase.triaging
    if contained.status is ConditionStatus.true:
        return Phase.contained
    if contained.reason == BUDGET_EXHAUSTED:
        return Phase.throttled
    if contained.reason in (NOT_STARTED, STEPS_RUNNING):
        return Phase.containing
    if contained.reason in SUPPRESSING:
        return Phase.suppressed
    return Phase.failed
