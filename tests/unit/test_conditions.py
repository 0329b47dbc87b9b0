"""Conditions follow the API conventions; the phase is derived from them."""

from __future__ import annotations

import datetime as dt

import pytest

from firebreak import conditions as c
from firebreak.api import Condition, ConditionStatus, Phase

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)
TRUE, FALSE, UNKNOWN = ConditionStatus.true, ConditionStatus.false, ConditionStatus.unknown


def test_transition_time_moves_only_when_status_flips() -> None:
    first = c.set_condition([], c.CONTAINED, FALSE, c.STEPS_RUNNING, "step 1", now=T0, generation=1)
    same = c.set_condition(first, c.CONTAINED, FALSE, c.STEPS_RUNNING, "step 2", now=T1, generation=2)
    assert same[0].last_transition_time == T0
    assert same[0].message == "step 2" and same[0].observed_generation == 2
    flipped = c.set_condition(same, c.CONTAINED, TRUE, c.STEPS_APPLIED, "done", now=T1, generation=2)
    assert flipped[0].last_transition_time == T1


def test_conditions_keep_a_stable_order() -> None:
    conds: list[Condition] = []
    for type_ in (c.RESOLVED, c.CONTAINED, c.TRIAGED, c.APPROVED):
        conds = c.set_condition(conds, type_, TRUE, "R", "", now=T0, generation=1)
    assert [x.type for x in conds] == [c.TRIAGED, c.APPROVED, c.CONTAINED, c.RESOLVED]


def conds(*items: tuple[str, ConditionStatus, str]) -> list[Condition]:
    out: list[Condition] = []
    for type_, status, reason in items:
        out = c.set_condition(out, type_, status, reason, "", now=T0, generation=1)
    return out


TRIAGED = (c.TRIAGED, TRUE, c.PLAYBOOK_SELECTED)
AUTO = (c.APPROVED, TRUE, c.APPROVAL_NOT_REQUIRED)


@pytest.mark.parametrize(("items", "resolution", "phase"), [
    ((), False, Phase.pending),
    (((c.TRIAGED, UNKNOWN, "Triaging"),), False, Phase.triaging),
    (((c.TRIAGED, FALSE, c.NO_MATCHING_PLAYBOOK),), False, Phase.suppressed),
    (((c.TRIAGED, FALSE, c.INVALID_PLAYBOOK),), False, Phase.failed),
    ((TRIAGED, (c.APPROVED, FALSE, c.AWAITING_APPROVAL)), False, Phase.awaiting_approval),
    ((TRIAGED, (c.APPROVED, FALSE, c.REJECTED_BY_PERSON)), False, Phase.suppressed),
    ((TRIAGED, (c.APPROVED, FALSE, c.APPROVAL_TIMED_OUT)), False, Phase.suppressed),
    ((TRIAGED, AUTO, (c.CONTAINED, FALSE, c.NOT_STARTED)), False, Phase.containing),
    ((TRIAGED, AUTO, (c.CONTAINED, FALSE, c.STEPS_RUNNING)), False, Phase.containing),
    ((TRIAGED, AUTO, (c.CONTAINED, FALSE, c.BUDGET_EXHAUSTED)), False, Phase.throttled),
    ((TRIAGED, AUTO, (c.CONTAINED, TRUE, c.STEPS_APPLIED)), False, Phase.contained),
    ((TRIAGED, AUTO, (c.CONTAINED, FALSE, c.STEP_FAILED)), False, Phase.failed),
    ((TRIAGED, AUTO, (c.CONTAINED, FALSE, c.NOT_CONTAINED)), False, Phase.failed),
    ((TRIAGED, AUTO, (c.CONTAINED, FALSE, c.DRY_RUN)), False, Phase.suppressed),
    ((TRIAGED, AUTO, (c.CONTAINED, TRUE, c.STEPS_APPLIED)), True, Phase.recovering),
    ((TRIAGED, AUTO, (c.CONTAINED, TRUE, c.STEPS_APPLIED), (c.RESOLVED, FALSE, c.REVERTING)),
     True, Phase.recovering),
    ((TRIAGED, AUTO, (c.CONTAINED, TRUE, c.STEPS_APPLIED), (c.RESOLVED, FALSE, c.REVERT_FAILED)),
     True, Phase.failed),
    ((TRIAGED, AUTO, (c.CONTAINED, TRUE, c.STEPS_APPLIED), (c.RESOLVED, TRUE, c.REVERTED)),
     True, Phase.resolved),
])
def test_phase_is_derived(items: tuple[tuple[str, ConditionStatus, str], ...], resolution: bool,
                          phase: Phase) -> None:
    assert c.derive_phase(conds(*items), resolution) is phase


@pytest.mark.parametrize(("items", "type_", "expected"), [
    ((), c.CONTAINED, False),
    (((c.CONTAINED, TRUE, c.STEPS_APPLIED),), c.CONTAINED, True),
    (((c.CONTAINED, FALSE, c.STEP_FAILED),), c.CONTAINED, False),
    (((c.CONTAINED, UNKNOWN, c.NOT_STARTED),), c.CONTAINED, False),
    ((TRIAGED, AUTO), c.CONTAINED, False),  # other conditions true, this one absent
    ((TRIAGED, (c.CONTAINED, FALSE, c.STEPS_RUNNING)), c.TRIAGED, True),
])
def test_is_true(items: tuple[tuple[str, ConditionStatus, str], ...], type_: str, expected: bool) -> None:
    assert c.is_true(conds(*items), type_) is expected


def test_is_true_without_conditions() -> None:
    assert c.is_true(None, c.TRIAGED) is False


@pytest.mark.parametrize(("items", "resolution", "phase"), [
    # Triaged with approval settled, but no step written yet.
    ((TRIAGED,), False, Phase.triaging),
    ((TRIAGED, AUTO), False, Phase.triaging),
    # Re-triage in progress wins over an older containment.
    (((c.TRIAGED, UNKNOWN, "Triaging"), (c.CONTAINED, TRUE, c.STEPS_APPLIED)), False, Phase.triaging),
    # The Resolved condition, once written, decides whatever the spec says now.
    ((TRIAGED, AUTO, (c.CONTAINED, TRUE, c.STEPS_APPLIED), (c.RESOLVED, FALSE, c.REVERTING)),
     False, Phase.recovering),
    ((TRIAGED, AUTO, (c.CONTAINED, TRUE, c.STEPS_APPLIED), (c.RESOLVED, TRUE, c.REVERTED)),
     False, Phase.resolved),
])
def test_phase_precedence(items: tuple[tuple[str, ConditionStatus, str], ...], resolution: bool,
                          phase: Phase) -> None:
    assert c.derive_phase(conds(*items), resolution) is phase


# Condition types and reasons are API: written to status and Events, and read back
# from incidents stored by an earlier release, so renaming one is a breaking change.
@pytest.mark.parametrize(("constant", "word"), [
    (c.TRIAGED, "Triaged"), (c.APPROVED, "Approved"), (c.CONTAINED, "Contained"),
    (c.RESOLVED, "Resolved"),
    (c.PLAYBOOK_SELECTED, "PlaybookSelected"), (c.NO_MATCHING_PLAYBOOK, "NoMatchingPlaybook"),
    (c.INVALID_PLAYBOOK, "InvalidPlaybook"), (c.PLAN_REFUSED, "PlanRefused"),
    (c.APPROVAL_NOT_REQUIRED, "ApprovalNotRequired"), (c.AWAITING_APPROVAL, "AwaitingApproval"),
    (c.APPROVED_BY_PERSON, "ApprovedByPerson"), (c.REJECTED_BY_PERSON, "RejectedByPerson"),
    (c.APPROVAL_TIMED_OUT, "ApprovalTimedOut"), (c.APPROVED_ON_TIMEOUT, "ApprovedOnTimeout"),
    (c.NOT_STARTED, "NotStarted"), (c.STEPS_RUNNING, "StepsRunning"),
    (c.STEPS_APPLIED, "StepsApplied"), (c.STEP_FAILED, "StepFailed"), (c.DRY_RUN, "DryRun"),
    (c.NOT_CONTAINED, "NothingApplied"), (c.REVERTING, "Reverting"), (c.REVERTED, "Reverted"),
    (c.REVERT_FAILED, "RevertFailed"),
    (c.ISOLATED, "Isolated"), (c.NO_TARGET, "NoTarget"), (c.TARGET_NOT_FOUND, "TargetNotFound"),
    (c.PLAYBOOK_DELETED, "PlaybookDeleted"), (c.ISOLATION_VERIFIED, "IsolationVerified"),
    (c.ISOLATION_DEFEATED, "IsolationDefeated"), (c.QUARANTINE_RESTORED, "QuarantineRestored"),
])
def test_condition_words_are_stable(constant: str, word: str) -> None:
    assert constant == word


@pytest.mark.parametrize(("stored", "phase"), [
    ([("Triaged", "False", "NoMatchingPlaybook")], Phase.suppressed),
    ([("Triaged", "True", "PlaybookSelected"), ("Approved", "False", "RejectedByPerson")],
     Phase.suppressed),
    ([("Triaged", "True", "PlaybookSelected"), ("Approved", "False", "ApprovalTimedOut")],
     Phase.suppressed),
    ([("Triaged", "True", "PlaybookSelected"), ("Approved", "True", "ApprovalNotRequired"),
      ("Contained", "False", "NotStarted")], Phase.containing),
    ([("Triaged", "True", "PlaybookSelected"), ("Approved", "True", "ApprovalNotRequired"),
      ("Contained", "False", "StepsRunning")], Phase.containing),
    ([("Triaged", "True", "PlaybookSelected"), ("Approved", "True", "ApprovalNotRequired"),
      ("Contained", "False", "DryRun")], Phase.suppressed),
    ([("Resolved", "False", "RevertFailed")], Phase.failed),
])
def test_phase_of_a_status_as_stored(stored: list[tuple[str, str, str]], phase: Phase) -> None:
    # Conditions as they come back from the API server, in their wire form.
    found = [Condition.model_validate({"type": t, "status": s, "reason": r, "message": "",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"})
             for t, s, r in stored]
    assert c.derive_phase(found, False) is phase


def test_the_condition_types_and_reasons_people_alert_on_keep_their_names() -> None:
    """They are API: shown by kubectl, written in Events, matched by people's alert rules."""
    assert (c.ISOLATED, c.NO_TARGET, c.TARGET_NOT_FOUND, c.PLAYBOOK_DELETED,
            c.ISOLATION_VERIFIED, c.ISOLATION_DEFEATED, c.QUARANTINE_RESTORED,
            c.BUDGET_EXHAUSTED) == (
        "Isolated", "NoTarget", "TargetNotFound", "PlaybookDeleted", "IsolationVerified",
        "IsolationDefeated", "QuarantineRestored", "BudgetExhausted")
