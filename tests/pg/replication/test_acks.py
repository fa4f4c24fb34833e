"""AckTracker and FailureCount alone: pure logic, no server."""

from __future__ import annotations

import trio
import trio.testing

from otpy.pg.replication.acks import AckTracker, FailureCount
from otpy.pg.replication.lsn import LSN


def tracker(cap: int = 10) -> tuple[AckTracker, list[tuple[LSN, int]]]:
    released: list[tuple[LSN, int]] = []
    return AckTracker(cap, lambda end, n: released.append((end, n))), released


def test_only_the_acknowledged_prefix_is_released_in_delivery_order() -> None:
    acks, released = tracker()
    for i in range(1, 5):
        acks.delivered(LSN(i * 10), LSN(i * 10 + 1))
    assert acks.ack(LSN(30)) and released == []
    assert acks.ack(LSN(10)) and released == [(LSN(11), 1)]
    assert not acks.ack(LSN(10)) and not acks.ack(LSN(99))  # done already / unknown
    assert acks.ack(LSN(20)) and released[-1] == (LSN(31), 2)  # 2 closes the gap up to 3
    assert acks.outstanding == 1
    acks.delivered(LSN(50), LSN(51), acked=True)  # nothing to confirm, but 4 is still open
    assert released[-1] == (LSN(31), 2) and acks.outstanding == 2
    assert acks.ack(LSN(40)) and released[-1] == (LSN(51), 2) and acks.outstanding == 0


async def test_wait_room_blocks_at_the_cap_until_the_oldest_is_acknowledged() -> None:
    acks, _ = tracker(cap=2)
    acks.delivered(LSN(10), LSN(11))
    acks.delivered(LSN(20), LSN(21))
    passed = trio.Event()

    async def reader() -> None:
        await acks.wait_room()
        passed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await acks.wait_blocked()
        acks.ack(LSN(20))  # a later one: no room yet
        await trio.testing.wait_all_tasks_blocked()
        assert acks.blocked and not passed.is_set()
        acks.ack(LSN(10))
        await passed.wait()
    assert not acks.blocked


def test_failures_are_counted_per_transaction() -> None:
    count = FailureCount()
    assert count.failed(LSN(10)) == 1 and count.failed(LSN(10)) == 2
    assert count.failed(LSN(20)) == 1  # another transaction: counting restarts
    count.succeeded(LSN(10))  # not the counted one: nothing changes
    assert count.attempts == 1
    count.succeeded(LSN(20))
    assert count.failed(LSN(20)) == 1


def test_a_transaction_is_exhausted_after_max_attempts_with_its_last_error() -> None:
    count = FailureCount()
    first, last = ValueError("first"), ValueError("last")
    count.failed(LSN(10), first)
    assert count.exhausted(LSN(10), 2) is None
    count.failed(LSN(10), last)
    assert count.exhausted(LSN(10), 2) is last
    assert count.exhausted(LSN(20), 2) is None  # another transaction
    count.succeeded(LSN(10))
    assert count.exhausted(LSN(10), 2) is None and count.error is None
