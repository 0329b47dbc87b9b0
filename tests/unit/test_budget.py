"""The flood budget: starts per minute, cluster-wide and per playbook."""

from __future__ import annotations

import datetime as dt

from firebreak.budget import Budget

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_starts_within_the_budget_are_admitted_and_counted() -> None:
    budget = Budget(per_minute=2)
    assert budget.admit(("ns", "a"), "ops/book", None, at(0)) is None
    assert budget.admit(("ns", "b"), "ops/book", None, at(1)) is None
    wait = budget.admit(("ns", "c"), "ops/book", None, at(2))
    assert wait is not None
    # The oldest start leaves the window 60 s after it was made.
    assert wait.seconds == 58
    assert wait.reason == ("2 incidents began acting in the last minute, the budget "
                           "cluster-wide is 2 per minute")


def test_a_slot_frees_when_the_oldest_start_is_a_minute_old() -> None:
    budget = Budget(per_minute=1)
    assert budget.admit(("ns", "a"), "ops/book", None, at(0)) is None
    wait = budget.admit(("ns", "b"), "ops/book", None, at(59.5))
    assert wait is not None and wait.seconds == 0.5
    assert budget.admit(("ns", "b"), "ops/book", None, at(60)) is None


def test_the_wait_is_never_zero() -> None:
    budget = Budget(per_minute=1)
    budget.admit(("ns", "a"), "ops/book", None, at(0))
    wait = budget.admit(("ns", "b"), "ops/book", None, at(59.99))
    assert wait is not None and wait.seconds == 0.05


def test_an_incident_counted_once_is_admitted_again_without_counting() -> None:
    budget = Budget(per_minute=1)
    assert budget.admit(("ns", "a"), "ops/book", None, at(0)) is None
    assert budget.admit(("ns", "a"), "ops/book", None, at(1)) is None  # its run resumed
    assert budget.admit(("ns", "b"), "ops/book", None, at(2)) is not None


def test_starts_seen_on_other_replicas_count() -> None:
    budget = Budget(per_minute=2)
    budget.note(("ns", "a"), "ops/book", at(0))
    budget.note(("ns", "a"), "ops/book", at(30))  # seen again: counted once, at first
    budget.note(("ns", "b"), "ops/book", at(1))
    wait = budget.admit(("ns", "c"), "ops/book", None, at(2))
    assert wait is not None and wait.seconds == 58


def test_a_playbook_limit_applies_to_its_own_incidents_only() -> None:
    budget = Budget(per_minute=0)  # no cluster-wide limit
    assert budget.admit(("ns", "a"), "ops/strict", 1, at(0)) is None
    wait = budget.admit(("ns", "b"), "ops/strict", 1, at(10))
    assert wait is not None and wait.seconds == 50
    assert wait.reason == ("1 incidents began acting in the last minute, the budget for "
                           "playbook ops/strict is 1 per minute")
    for i in range(50):
        assert budget.admit(("ns", f"other-{i}"), "ops/other", None, at(11)) is None


def test_the_cluster_limit_counts_every_playbook() -> None:
    budget = Budget(per_minute=2)
    budget.admit(("ns", "a"), "ops/one", 10, at(0))
    budget.admit(("ns", "b"), "ops/two", 10, at(0))
    assert budget.admit(("ns", "c"), "ops/three", 10, at(0)) is not None


def test_starts_older_than_the_window_are_forgotten() -> None:
    budget = Budget(per_minute=1)
    budget.admit(("ns", "a"), "ops/book", None, at(0))
    assert budget.admit(("ns", "b"), "ops/book", None, at(60)) is None
    assert budget.admit(("ns", "a"), "ops/book", None, at(61)) is not None  # a is gone


def test_a_start_noted_out_of_order_is_not_counted_once_older_than_the_window() -> None:
    budget = Budget(per_minute=2)
    budget.note(("ns", "a"), "ops/book", at(30))
    budget.note(("ns", "b"), "ops/book", at(5))  # seen late, behind a newer start
    # b began exactly a minute ago: out of the window, not counted.
    assert budget.admit(("ns", "c"), "ops/book", None, at(65)) is None
    wait = budget.admit(("ns", "d"), "ops/book", None, at(66))
    assert wait is not None and wait.seconds == 24  # a and c count; a leaves at 90
    assert budget.admit(("ns", "e"), "ops/book", None, at(91)) is None
    assert list(budget._starts) == [("ns", "c"), ("ns", "e")]  # a, then b, forgotten
