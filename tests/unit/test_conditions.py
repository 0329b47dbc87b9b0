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
