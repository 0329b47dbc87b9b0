"""The keyed work queue: each key once, never two workers on one key, later adds
never delay an earlier one."""

from __future__ import annotations

import asyncio

from firebreak.workqueue import WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_added_many_times_is_taken_once_in_the_order_first_added() -> None:
    queue: WorkQueue[str] = WorkQueue(clock=Clock())
    for key in ("a", "b", "a", "c", "b"):
        queue.add(key)
    assert [queue.take(), queue.take(), queue.take(), queue.take()] == ["a", "b", "c", None]
    assert queue.pending() == 0


def test_a_key_added_while_in_hand_comes_back_only_when_done() -> None:
    queue: WorkQueue[str] = WorkQueue(clock=Clock())
    queue.add("a")
    assert queue.take() == "a"
    queue.add("a")
    assert queue.take() is None  # never two workers on one key
    assert "a" in queue
    assert queue.pending() == 1
    queue.done("a")
    assert queue.take() == "a"
    queue.done("a")
    assert queue.take() is None
    assert "a" not in queue


def test_a_key_added_for_later_waits_for_its_time() -> None:
    clock = Clock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add("a", after=5)
    assert queue.take() is None
    assert "a" in queue
    assert queue.idle()  # waiting is not work
    clock.now += 4.9
    assert queue.take() is None
    clock.now += 0.1
    assert queue.take() == "a"


def test_the_sooner_of_two_adds_wins() -> None:
    clock = Clock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add("a", after=10)
    queue.add("a", after=2)
    queue.add("a", after=30)  # later: ignored
    clock.now += 2
    assert queue.take() == "a"
    queue.done("a")
    clock.now += 30
    assert queue.take() is None  # the superseded times left nothing behind
    assert queue.pending() == 0


def test_an_add_now_overrides_a_wait_and_a_later_add_does_not_delay_a_ready_key() -> None:
    clock = Clock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add("a", after=10)
    queue.add("a")
    assert queue.take() == "a"
    queue.done("a")
    queue.add("b")
    queue.add("b", after=10)
    assert queue.take() == "b"


def test_a_key_whose_time_comes_while_in_hand_runs_again_after() -> None:
    clock = Clock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add("a")
    assert queue.take() == "a"
    queue.add("a", after=1)
    clock.now += 1
    assert queue.take() is None
    assert not queue.idle()
    queue.done("a")
    assert queue.take() == "a"


def test_a_key_in_hand_and_due_again_now_is_not_also_delayed() -> None:
    clock = Clock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add("a")
    assert queue.take() == "a"
    queue.add("a")
    queue.add("a", after=5)  # already coming back at once
    assert queue.pending() == 1
    queue.done("a")
    assert queue.take() == "a"
    queue.done("a")
    clock.now += 5
    assert queue.take() is None


async def test_get_waits_for_an_add_and_for_a_time() -> None:
    queue: WorkQueue[str] = WorkQueue()
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    queue.add("a")
    assert await asyncio.wait_for(waiting, 1) == "a"
    queue.add("b", after=0.05)
    assert await asyncio.wait_for(queue.get(), 1) == "b"


async def test_two_workers_never_hold_the_same_key() -> None:
    queue: WorkQueue[int] = WorkQueue()
    held: set[int] = set()
    overlaps = []
    runs = []

    async def worker() -> None:
        while True:
            key = await queue.get()
            if key in held:
                overlaps.append(key)
            held.add(key)
            await asyncio.sleep(0.001)
            runs.append(key)
            held.discard(key)
            queue.done(key)

    workers = [asyncio.create_task(worker()) for _ in range(4)]
    for round_ in range(20):
        for key in range(5):
            queue.add(key)
        await asyncio.sleep(0.0005 * (round_ % 3))
    for _ in range(200):
        await asyncio.sleep(0.005)
        if queue.idle():
            break
    for task in workers:
        task.cancel()
    assert overlaps == []
    assert set(runs) == set(range(5))
    assert queue.idle()
