"""PoolCore's decisions without a server: FIFO hand-off, expiry, aborts, growth, leaks, long holds.

The pool state never does I/O itself: its workers (a :class:`SlotOwner`) and
connections are replaced here by fakes, and time by trio's ``MockClock``
(``autojump_clock``), so each deadline is hit exactly and no test sleeps.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from psycopg import pq
from psycopg.rows import tuple_row

from otpy.pg.config import DatabaseConfig, PoolConfig
from otpy.pg.pool.core import PoolCore, Slot, SlotState
from otpy.pg.pool.errors import (
    PoolClosed,
    PoolError,
    PoolOverloaded,
    PoolTimeout,
    PoolUnavailable,
)


class FakePGconn:
    """What ``checkin`` reads of libpq: the transaction status, kept locally."""

    def __init__(self) -> None:
        self.transaction_status = pq.TransactionStatus.IDLE


class FakeConnection:
    """The attributes ``checkin`` checks on a returned connection, at the pool's defaults."""

    def __init__(self) -> None:
        self.pgconn = FakePGconn()
        self.autocommit = True
        self.row_factory = tuple_row
        self.isolation_level = None
        self.read_only = None
        self.deferrable = None


class FakeWorker:
    """A slot's owner that only counts the maintenance requests it gets."""

    def __init__(self) -> None:
        self.maintenance_requests = 0

    def request_maintenance(self) -> None:
        self.maintenance_requests += 1


class FakePool:
    """A PoolCore with ``connected`` fake slots and a record of its grow requests."""

    def __init__(self, size: int | tuple[int, int] = 1, **config: Any) -> None:
        low, high = (size, size) if isinstance(size, int) else size
        config.setdefault("checkout_timeout", 5.0)
        self.grow_requests = 0
        self.core = PoolCore(
            "p",
            PoolConfig(name="p", database="db", min_size=low, max_size=high, **config),
            DatabaseConfig(name="db", database="db"),
            request_grow=self._grow,
        )
        self.slots = [self.open_slot() for _ in range(low)]

    def _grow(self) -> None:
        self.grow_requests += 1

    def open_slot(self, *, ephemeral: bool = False) -> Slot:
        slot = self.core.add_slot(FakeWorker(), ephemeral)
        self.core.connected(slot, FakeConnection())  # type: ignore[arg-type]
        return slot


@asynccontextmanager
async def timer(core: PoolCore) -> AsyncIterator[trio.Nursery]:
    """Run the pool's deadline timer (the manager's job) for the block; yield a nursery."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(core.run_timer)
        yield nursery
        nursery.cancel_scope.cancel()


def worker_of(slot: Slot) -> FakeWorker:
    worker = slot.worker
    assert isinstance(worker, FakeWorker)
    return worker


async def test_an_idle_connection_is_taken_at_once_most_recently_returned_first() -> None:
    pool = FakePool(2)
    core = pool.core
    first = await core.checkout()
    second = await core.checkout()
    assert core.checkin(first) and core.checkin(second)
    assert await core.checkout() is second
    assert core.stats().waited_checkouts == 0


async def test_waiters_are_served_in_arrival_order(autojump_clock: trio.testing.MockClock) -> None:
    core = FakePool(1).core
    held = await core.checkout()
    served: list[int] = []

    async def wait_turn(i: int) -> None:
        slot = await core.checkout()
        served.append(i)
        core.checkin(slot)

    async with timer(core), trio.open_nursery() as waiters:
        for i in range(4):
            waiters.start_soon(wait_turn, i)
            await trio.testing.wait_all_tasks_blocked()
        assert core.stats().waiting == 4
        core.checkin(held)
    assert served == [0, 1, 2, 3]
    assert core.stats().waited_checkouts == 4


async def test_a_clean_return_goes_to_the_first_waiter_not_onto_the_idle_stack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core = FakePool(1).core
    held = await core.checkout()
    got: list[Slot] = []

    async def wait() -> None:
        got.append(await core.checkout())
        await trio.sleep_forever()

    async with timer(core) as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        core.checkin(held)
        assert not core.idle
        assert held.state is SlotState.IN_USE
        await trio.testing.wait_all_tasks_blocked()
        assert got == [held]


async def test_a_waiter_times_out_at_its_deadline_with_the_pool_numbers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core = FakePool(1).core
    await core.checkout()
    async with timer(core):
        start = trio.current_time()
        with pytest.raises(PoolTimeout, match="within 2 s") as info:
            await core.checkout(timeout=2.0)
        assert trio.current_time() - start == 2.0
    error = info.value
    assert (error.pool, error.timeout, error.size, error.waiting) == ("p", 2.0, 1, 0)
    assert isinstance(error, TimeoutError)
    stats = core.stats()
    assert (stats.timeouts, stats.waiting) == (1, 0)
    assert len(core.deadlines) == 0


async def test_waiters_with_different_timeouts_expire_each_at_its_own_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core = FakePool(1).core
    await core.checkout()
    expired: list[tuple[float, float]] = []

    async def wait(limit: float) -> None:
        start = trio.current_time()
        with pytest.raises(PoolTimeout):
            await core.checkout(timeout=limit)
        expired.append((limit, trio.current_time() - start))

    async with timer(core), trio.open_nursery() as waiters:
        for limit in (3.0, 1.0, 2.0, 1.0):
            waiters.start_soon(wait, limit)
    assert expired == [(1.0, 1.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]
    assert core.stats().timeouts == 4


async def test_the_pool_timeout_counts_the_callers_still_queued_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core = FakePool(1).core
    await core.checkout()
    errors: list[PoolTimeout] = []

    async def wait(limit: float) -> None:
        try:
            await core.checkout(timeout=limit)
        except PoolTimeout as exc:
            errors.append(exc)

    async with timer(core), trio.open_nursery() as waiters:
        waiters.start_soon(wait, 1.0)
        await trio.testing.wait_all_tasks_blocked()
        waiters.start_soon(wait, 5.0)
    assert [(e.timeout, e.waiting) for e in errors] == [(1.0, 1), (5.0, 0)]


async def test_a_served_waiter_is_never_timed_out_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core = FakePool(1).core
    held = await core.checkout()

    async def release_after(delay: float) -> None:
        await trio.sleep(delay)
        core.checkin(held)

    async with timer(core) as nursery:
        nursery.start_soon(release_after, 1.0)
        slot = await core.checkout(timeout=2.0)
        assert len(core.deadlines) == 0
        await trio.sleep(10.0)  # well past the waiter's deadline
    assert slot is held and slot.state is SlotState.IN_USE
    assert core.stats().timeouts == 0


async def test_a_zero_timeout_fails_at_once_when_nothing_is_idle() -> None:
    core = FakePool(1).core
    await core.checkout()
    with pytest.raises(PoolTimeout) as info:
        await core.checkout(timeout=0)
    assert info.value.timeout == 0
    assert core.stats().waiting == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_is_never_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core = FakePool(1).core
    held = await core.checkout()
    async with timer(core):
        with trio.move_on_after(1.0) as scope:
            await core.checkout(timeout=5.0)
        assert scope.cancelled_caught
        stats = core.stats()
        assert (stats.waiting, stats.cancelled_waits, stats.timeouts) == (0, 1, 0)
        assert len(core.deadlines) == 0
        core.checkin(held)
        assert held.state is SlotState.IDLE
        assert list(core.idle) == [held]


async def test_a_cancelled_caller_takes_no_idle_connection() -> None:
    core = FakePool(1).core
    with trio.CancelScope() as scope:
        scope.cancel()
        await core.checkout()
    assert scope.cancelled_caught
    assert core.stats().idle == 1
    assert core.stats().checkouts == 0


async def test_queued_callers_beyond_the_openings_ask_for_growth_up_to_max_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = FakePool((1, 3))
    core = pool.core
    await core.checkout()
    async with timer(core) as nursery:
        for expected in (1, 2, 2):
            nursery.start_soon(core.checkout)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.grow_requests == expected
        assert (core.pending_grow, core.stats().waiting) == (2, 3)
        # An on-demand worker registering its slot takes one pending request.
        pool.open_slot(ephemeral=True)
        assert core.pending_grow == 1
        nursery.cancel_scope.cancel()


async def test_max_waiting_callers_refuse_the_next_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core = FakePool(1, max_waiting=2).core
    await core.checkout()
    async with timer(core) as nursery:
        for _ in range(2):
            nursery.start_soon(core.checkout)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with pytest.raises(PoolOverloaded, match="max_waiting=2") as info:
            await core.checkout()
        assert trio.current_time() == start
        assert (info.value.waiting, info.value.max_waiting) == (2, 2)
        assert core.stats().overloaded == 1
        nursery.cancel_scope.cancel()


async def test_closing_the_pool_fails_its_waiters_with_pool_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core = FakePool(1).core
    await core.checkout()
    failures: list[BaseException] = []

    async def wait() -> None:
        try:
            await core.checkout()
        except PoolClosed as exc:
            failures.append(exc)

    async with timer(core) as nursery:
        for _ in range(2):
            nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        core.close()
        await trio.testing.wait_all_tasks_blocked()
        assert len(failures) == 2 and len(core.deadlines) == 0
        with pytest.raises(PoolClosed):
            await core.checkout()


async def test_a_failed_connection_attempt_with_none_usable_fails_waiters_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core = FakePool((0, 1)).core
    slot = core.add_slot(FakeWorker(), ephemeral=False)  # connecting, not yet open
    failures: list[PoolUnavailable] = []

    async def wait() -> None:
        try:
            await core.checkout()
        except PoolUnavailable as exc:
            failures.append(exc)

    async with timer(core) as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        core.connect_failed(slot, "connection refused")
        await trio.testing.wait_all_tasks_blocked()
        assert [f.last_error for f in failures] == ["connection refused"]
        assert core.down and len(core.deadlines) == 0
        # While a worker retries, new callers are refused at once too.
        with pytest.raises(PoolUnavailable):
            await core.checkout()
        assert core.stats().unavailable == 2


async def test_a_dirty_return_goes_to_its_worker_not_to_the_next_caller() -> None:
    pool = FakePool(1)
    core, slot = pool.core, pool.slots[0]
    taken = await core.checkout()
    assert taken.conn is not None
    taken.conn.pgconn.transaction_status = pq.TransactionStatus.INTRANS  # type: ignore[misc]
    assert core.checkin(taken)
    assert slot.state is SlotState.BUSY
    assert worker_of(slot).maintenance_requests == 1
    assert core.checkout_nowait() is None


async def test_returning_a_connection_twice_is_an_error() -> None:
    core = FakePool(1).core
    slot = await core.checkout()
    core.checkin(slot)
    with pytest.raises(PoolError, match="returned twice"):
        core.checkin(slot)


async def test_a_connection_whose_worker_left_is_closed_by_its_caller_at_check_in() -> None:
    core = FakePool(1).core
    slot = await core.checkout()
    assert core.remove_slot(slot) is False  # in use: the caller keeps it for now
    assert core.checkin(slot) is False
    assert slot.state is SlotState.CLOSED


async def test_a_connection_kept_by_a_finished_task_is_reclaimed_by_the_leak_sweep() -> None:
    pool = FakePool(2)
    core = pool.core
    leaked: list[Slot] = []

    async def forget() -> None:
        slot = core.checkout_nowait()
        assert slot is not None
        leaked.append(slot)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(forget)
    kept = await core.checkout()  # held by a task still running: not a leak
    assert core.reclaim_leaks() == 1
    slot = leaked[0]
    assert slot.state is SlotState.BUSY and slot.reclaim and slot.holder is None
    assert worker_of(slot).maintenance_requests == 1
    assert kept.state is SlotState.IN_USE
    assert core.stats().leaked == 1
    assert core.reclaim_leaks() == 0


async def test_a_long_hold_is_reported_once_per_checkout_with_the_holders_stack(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    core = FakePool(1).core
    caplog.set_level(logging.WARNING, logger="otpy.pg.pool")
    slot = await core.checkout()
    await trio.sleep(4.0)
    assert core.warn_long_holds(5.0) == 0
    await trio.sleep(2.0)
    assert core.warn_long_holds(5.0) == 1
    assert core.warn_long_holds(5.0) == 0  # the same checkout is reported once
    core.checkin(slot)
    slot = await core.checkout()
    await trio.sleep(6.0)
    assert core.warn_long_holds(5.0) == 1
    events = [r for r in caplog.records if getattr(r, "event", "") == "pool_connection_held_long"]
    assert len(events) == 2
    assert "test_a_long_hold_is_reported_once_per_checkout" in events[0].getMessage()
    assert core.stats().held_too_long == 2


async def test_long_holds_are_not_measured_with_timing_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = FakePool(1)
    pool.core.timing = False
    await pool.core.checkout()
    await trio.sleep(60.0)
    assert pool.core.warn_long_holds(5.0) == 0
