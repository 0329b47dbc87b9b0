"""Leader election over the recording API: replicas with clocks the test moves."""

from __future__ import annotations

import datetime as dt

from firebreak.leader import LEASE_NAME, Elector
from tests.engine.recorder import Recorder
from tests.engine.world import OPERATOR_NS, Clock

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Monotonic:
    """One clock for the test's replicas: their monotonic time, and the wall clock
    (skewed per replica, which the election must not care about)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self, skew: float) -> dt.datetime:
        return EPOCH + dt.timedelta(seconds=self.now + skew)


def replica(api: Recorder, name: str, monotonic: Monotonic, clock: Clock,
            lease_seconds: float = 15) -> Elector:
    skew = {"a": 0.0, "b": -40.0, "c": 300.0}[name]
    return Elector(api.kube(), OPERATOR_NS, name, lease_seconds, monotonic=monotonic,
                   wall=lambda: monotonic.wall(skew))


def holder(api: Recorder) -> str | None:
    lease = api.get("leases", OPERATOR_NS, LEASE_NAME)
    assert lease is not None
    return lease["spec"].get("holderIdentity")  # type: ignore[no-any-return]


def test_the_first_replica_takes_the_lease_and_the_others_follow(api: Recorder,
                                                                 clock: Clock) -> None:
    time = Monotonic()
    a, b = replica(api, "a", time, clock), replica(api, "b", time, clock)
    a.tick()
    b.tick()
    assert (a.leading(), b.leading()) == (True, False)
    assert holder(api) == "a"
    for _ in range(20):  # a renews every round; b never sees it go stale
        time.now += 2
        a.tick()
        b.tick()
        assert (a.leading(), b.leading()) == (True, False)


def test_a_holder_that_stops_renewing_is_replaced_after_the_lease_duration(
        api: Recorder, clock: Clock) -> None:
    time = Monotonic()
    a, b = replica(api, "a", time, clock), replica(api, "b", time, clock)
    a.tick()
    b.tick()
    renewals = api.get("leases", OPERATOR_NS, LEASE_NAME)["spec"]["leaseTransitions"]  # type: ignore[index]
    # a is killed: no more renewals.
    time.now += 14.9
    b.tick()
    assert not b.leading()
    time.now += 0.1
    b.tick()
    assert b.leading()
    assert holder(api) == "b"
    lease = api.get("leases", OPERATOR_NS, LEASE_NAME)
    assert lease is not None
    assert lease["spec"]["leaseTransitions"] == renewals + 1
    # a's own view: its last renewal is past the deadline, so it has stopped acting.
    assert not a.leading()
    a.tick()  # and when it comes back, it follows
    assert not a.leading()
    assert holder(api) == "b"


def test_a_holder_that_cannot_renew_stops_leading_before_the_lease_expires(
        api: Recorder, clock: Clock) -> None:
    time = Monotonic()
    a = replica(api, "a", time, clock)
    a.tick()
    api.fail("update", "leases", 503, times=None)
    api.fail("get", "leases", 503, times=None)
    time.now += 9.9
    assert a.leading()
    time.now += 0.1  # 2/3 of the lease: a stops, 5 s before anyone else may start
    assert not a.leading()


def test_two_replicas_racing_for_an_expired_lease_do_not_both_win(api: Recorder,
                                                                  clock: Clock) -> None:
    time = Monotonic()
    a, b, c = (replica(api, n, time, clock) for n in "abc")
    a.tick()
    b.tick()
    c.tick()
    time.now += 15
    # b and c both read the expired lease, then both write: the second write's
    # resourceVersion is stale.
    b_seen = api.get("leases", OPERATOR_NS, LEASE_NAME)
    b.tick()
    assert b.leading()
    assert b_seen is not None
    c._seen = None  # c decides from the same stale read b did
    c.tick()
    assert not c.leading()
    assert holder(api) == "b"


def test_a_replica_stopping_cleanly_hands_the_lease_over_at_once(api: Recorder,
                                                                 clock: Clock) -> None:
    time = Monotonic()
    a, b = replica(api, "a", time, clock), replica(api, "b", time, clock)
    a.tick()
    b.tick()
    a.release()
    assert not a.leading()
    assert holder(api) is None
    time.now += 0.5
    b.tick()
    assert b.leading()
    assert holder(api) == "b"


def test_a_replica_stopping_gives_the_lease_up_even_after_its_renewals_stopped(
        api: Recorder, clock: Clock) -> None:
    """On a clean stop the renewal loop ends first; the Lease must still be given up,
    or the others wait out its whole duration."""
    time = Monotonic()
    a = replica(api, "a", time, clock)
    a.tick()
    time.now += 20  # no renewal since: a no longer counts itself the leader
    assert not a.leading()
    a.release()
    assert holder(api) is None


def test_a_replica_that_does_not_hold_the_lease_leaves_it_alone_when_stopping(
        api: Recorder, clock: Clock) -> None:
    time = Monotonic()
    a, b = replica(api, "a", time, clock), replica(api, "b", time, clock)
    a.tick()
    b.tick()
    b.release()
    assert holder(api) == "a"
