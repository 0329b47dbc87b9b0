"""The Lease decision: renew our own, take a free or expired one, follow a live one."""

from __future__ import annotations

import datetime as dt

import pytest

from firebreak.leader import LeaseRecord, Move, decide, micro_time


def test_our_own_lease_is_renewed_however_old() -> None:
    assert decide(LeaseRecord("me", 15), "me", unchanged_for=100) is Move.RENEW


def test_a_lease_nobody_holds_is_taken_at_once() -> None:
    assert decide(LeaseRecord(None, 15), "me", unchanged_for=0) is Move.TAKE


@pytest.mark.parametrize(("unchanged_for", "move"), [
    (0.0, Move.FOLLOW), (14.99, Move.FOLLOW), (15.0, Move.TAKE), (60.0, Move.TAKE)])
def test_another_holder_is_followed_until_its_record_is_unchanged_for_the_duration(
        unchanged_for: float, move: Move) -> None:
    assert decide(LeaseRecord("other", 15), "me", unchanged_for) is move


def test_the_record_round_trips_through_the_api_shape() -> None:
    record = LeaseRecord("me", 15, "2026-01-02T03:04:05.000006Z", "2026-01-02T03:04:00.000000Z", 3)
    api = record.to_api()
    assert api == {"holderIdentity": "me", "leaseDurationSeconds": 15,
                   "renewTime": "2026-01-02T03:04:05.000006Z",
                   "acquireTime": "2026-01-02T03:04:00.000000Z", "leaseTransitions": 3}
    assert LeaseRecord.from_api({"spec": api}) == record


def test_an_empty_lease_reads_as_free() -> None:
    record = LeaseRecord.from_api({"spec": {"holderIdentity": ""}})
    assert record == LeaseRecord(None, 0.0)
    assert LeaseRecord.from_api({}) == LeaseRecord(None, 0.0)


def test_micro_time_is_utc_with_microseconds() -> None:
    local = dt.datetime(2026, 1, 2, 5, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert micro_time(local) == "2026-01-02T03:04:05.000006Z"
