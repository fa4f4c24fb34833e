"""The one deadline queue behind call timeouts and pool waits, on trio's MockClock."""

from __future__ import annotations

import math

import trio
import trio.testing

from otpy._deadlines import Deadlines


async def test_keys_expire_in_deadline_order_across_timeouts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    expired: list[tuple[str, float, float]] = []

    def expire(key: str, timeout: float) -> None:
        expired.append((key, timeout, trio.current_time()))

    deadlines: Deadlines[str] = Deadlines(expire)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadlines.run)
        await trio.lowlevel.checkpoint()
        deadlines.add("slow", 5.0)
        deadlines.add("fast", 2.0)
        await trio.sleep(1.0)
        deadlines.add("late", 2.0)
        await trio.sleep(10.0)
        nursery.cancel_scope.cancel()
    assert expired == [("fast", 2.0, 2.0), ("late", 2.0, 3.0), ("slow", 5.0, 5.0)]
    assert len(deadlines) == 0


async def test_a_removed_key_never_expires(autojump_clock: trio.testing.MockClock) -> None:
    expired: list[str] = []
    deadlines: Deadlines[str] = Deadlines(lambda key, _t: expired.append(key))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadlines.run)
        await trio.lowlevel.checkpoint()
        bucket = deadlines.add("answered", 1.0)
        deadlines.add("unanswered", 1.0)
        assert bucket.pop("answered", None) is not None
        await trio.sleep(2.0)
        nursery.cancel_scope.cancel()
    assert expired == ["unanswered"]


def test_an_entry_added_while_expiring_sets_the_next_wake_up() -> None:
    now = [0.0]
    added: list[str] = []

    def expire(key: str, _timeout: float) -> None:
        if key == "first":
            deadlines.add("retry", 0.5)
            added.append("retry")

    deadlines: Deadlines[str] = Deadlines(expire, clock=lambda: now[0])
    deadlines.add("first", 1.0)
    deadlines.add("other", 10.0)
    now[0] = 1.0
    # "retry" (1.5) is due before "other" (10.0): the next wake-up must say so.
    assert deadlines.expire_due() == 1.5
    assert added == ["retry"]
    now[0] = 20.0
    assert deadlines.expire_due() == math.inf
    assert len(deadlines) == 0


def test_computed_timeouts_do_not_grow_the_queue() -> None:
    now = [0.0]
    deadlines: Deadlines[int] = Deadlines(lambda key, _t: None, clock=lambda: now[0])
    for i in range(1000):
        deadlines.add(i, 1.0 + i / 1000)
    now[0] = 5.0
    deadlines.expire_due()
    assert len(deadlines) == 0
    assert deadlines._buckets == {}
