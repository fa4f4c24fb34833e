"""Waiting for a connection: FIFO, timeouts, overload, cancellation, who gets served when."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from pool_helpers import Admin, pool_config

from otpy.pg import pool
from otpy.pg.config import DatabaseConfig


async def waiting(p: pool.Pool, n: int) -> None:
    with trio.fail_after(10):
        await p.wait_for(lambda s: s.waiting == n)


async def take(got: list[Any], item: object) -> None:
    """Check out a connection of pool "p" and record ``item`` once served."""
    async with pool.connection("p"):
        got.append(item)


async def test_waiters_are_served_in_fifo_order(db: DatabaseConfig) -> None:
    order: list[int] = []
    async with pool.open_pool("p", pool_config(1), db) as p:
        lease = await pool.acquire("p")
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(take, order, i)
                await waiting(p, i + 1)
            await lease.release()
        assert order == [0, 1, 2, 3, 4, 5]
        stats = p.stats()
        assert stats.waited_checkouts == 6 and stats.waiting == 0 and stats.idle == 1
        assert 0 < stats.wait_time_max <= stats.wait_time_total
        assert stats.average_wait == stats.wait_time_total / 6
        assert sum(count for _, count in stats.wait_histogram) == stats.checkouts == 7


async def test_checkout_timeout_names_the_pool_size_and_waiters(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1, checkout_timeout=0.2), db) as p:
        async with pool.connection("p"):
            with pytest.raises(pool.PoolTimeout) as info:
                async with pool.connection("p"):
                    pass
        error = info.value
        assert isinstance(error, TimeoutError)
        assert "pool 'p'" in str(error) and "0.2 s" in str(error) and "size 1" in str(error)
        assert (error.pool, error.timeout, error.size, error.waiting) == ("p", 0.2, 1, 0)
        stats = p.stats()
        assert stats.timeouts == 1 and stats.waiting == 0 and stats.idle == 1


async def test_too_many_waiters_are_refused_at_once(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1, max_waiting=2), db) as p:
        lease = await pool.acquire("p")
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(pool.query, "p", "SELECT 1")
            await waiting(p, 2)
            with pytest.raises(pool.PoolOverloaded, match="max_waiting=2") as info:
                await pool.query("p", "SELECT 1")
            with pytest.warns(DeprecationWarning, match="TooManyWaiters"):
                assert pool.TooManyWaiters is pool.PoolOverloaded
            assert (info.value.waiting, info.value.max_waiting) == (2, 2)
            await lease.release()
        assert p.stats().overloaded == 1


async def test_nobody_waits_with_max_waiting_zero(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1, max_waiting=0), db), pool.connection("p"):
        with pytest.raises(pool.PoolOverloaded):
            await pool.query("p", "SELECT 1")


async def test_cancelled_waiter_leaves_the_queue(db: DatabaseConfig) -> None:
    got: list[str] = []
    async with pool.open_pool("p", pool_config(1), db) as p:
        lease = await pool.acquire("p")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(take, got, "first")
            await waiting(p, 1)
            cancel_first = trio.CancelScope()

            async def first_waiter() -> None:
                with cancel_first:
                    await take(got, "cancelled")

            nursery.start_soon(first_waiter)
            await waiting(p, 2)
            nursery.start_soon(take, got, "last")
            await waiting(p, 3)
            cancel_first.cancel()
            await waiting(p, 2)
            await lease.release()
        assert got == ["first", "last"]
        stats = p.stats()
        assert stats.cancelled_waits == 1 and stats.idle == 1 and stats.in_use == 0


async def test_connection_is_never_handed_to_a_caller_who_gave_up(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        lease = await pool.acquire("p")
        scope = trio.CancelScope()
        outcome: list[str] = []

        async def waiter() -> None:
            with scope:
                async with pool.connection("p"):
                    outcome.append("got it")
            outcome.append("cancelled" if scope.cancelled_caught else "done")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await waiting(p, 1)
            # Give up and return in the same step: the return must not go to the
            # waiter that has just given up.
            scope.cancel()
            await lease.release()
        assert outcome == ["cancelled"]
        stats = p.stats()
        assert (stats.idle, stats.in_use, stats.checkouts) == (1, 0, 1)


async def test_caller_cancelled_right_after_being_served_returns_the_connection(
    db: DatabaseConfig,
) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        lease = await pool.acquire("p")
        scope = trio.CancelScope()

        async def waiter() -> None:
            with scope:
                async with pool.connection("p") as conn:
                    await conn.execute("SELECT 1")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await waiting(p, 1)
            await lease.release()  # handed to the waiter...
            scope.cancel()  # ...which is cancelled before it runs
        assert scope.cancelled_caught
        with trio.fail_after(10):
            await p.wait_for(lambda s: s.idle == 1)
        assert (await pool.query("p", "SELECT 1")).scalar() == 1


async def test_expired_waiter_at_the_head_does_not_disturb_the_others(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        lease = await pool.acquire("p")
        results: list[object] = []

        async def take(limit: float) -> None:
            try:
                async with pool.connection("p", timeout=limit):
                    results.append(limit)
            except pool.PoolTimeout as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take, 0.05)
            await waiting(p, 1)
            nursery.start_soon(take, 30.0)
            await waiting(p, 2)
            with trio.fail_after(10):
                await p.wait_for(lambda s: s.timeouts == 1)
            await lease.release()
        assert isinstance(results[0], pool.PoolTimeout) and results[1] == 30.0
        stats = p.stats()
        assert stats.timeouts == 1 and stats.idle == 1
        assert (await pool.query("p", "SELECT 1")).scalar() == 1  # the manager is fine


async def test_waiter_is_served_when_a_connection_reconnects(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        lease = await pool.acquire("p")
        old = lease.connection.info.backend_pid
        async with trio.open_nursery() as nursery:
            result: list[int] = []

            async def wait_and_query() -> None:
                result.append((await pool.query("p", "SELECT pg_backend_pid()")).scalar())

            nursery.start_soon(wait_and_query)
            await waiting(p, 1)
            await lease.connection.close()
            await lease.release()  # a closed connection: the worker reconnects
        assert result and result[0] != old
        assert p.stats().timeouts == 0


async def test_on_demand_connections_grow_to_max_and_close_when_idle(
    db: DatabaseConfig, admin: Admin
) -> None:
    config = pool_config((1, 3), max_idle=0.3)
    async with pool.open_pool("p", config, db) as p:
        leases = [await pool.acquire("p") for _ in range(3)]
        assert len({lease.connection.info.backend_pid for lease in leases}) == 3
        stats = p.stats()
        assert (stats.size, stats.in_use) == (3, 3)
        with pytest.raises(pool.PoolTimeout):
            await pool.acquire("p", timeout=0.05)  # max reached
        for lease in leases:
            await lease.release()
        with trio.fail_after(10):
            await p.wait_for(lambda s: s.size == 1)
        assert p.stats().connections_closed_idle == 2
        await admin.wait_backends(1)


async def test_waiter_is_served_when_an_on_demand_slot_frees_up(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config((0, 1)), db) as p:
        lease = await pool.acquire("p")
        slot = lease._slot
        assert slot is not None
        async with trio.open_nursery() as nursery:
            result: list[int] = []

            async def wait_and_query() -> None:
                result.append((await pool.query("p", "SELECT 7")).scalar())

            nursery.start_soon(wait_and_query)
            await waiting(p, 1)
            # The on-demand worker dies (its slot frees up) while a caller waits:
            # a new worker must be started for the waiter.
            slot.worker.ref.kill()
            await lease.release()
        assert result == [7]
        assert p.stats().timeouts == 0


async def test_caller_cancelled_mid_query_cancels_it_on_the_server(
    db: DatabaseConfig, admin: Admin
) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        started = trio.Event()
        pid: list[int] = []

        async def slow() -> None:
            async with pool.connection("p") as conn:
                pid.append(conn.info.backend_pid)
                started.set()
                await conn.execute("SELECT pg_sleep(30)")

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow)
                await started.wait()
                await admin.wait_state(pid[0], "active")
                nursery.cancel_scope.cancel()
        state = await admin.scalar("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid[0],))
        assert state == "idle"
        assert (await pool.query("p", "SELECT pg_backend_pid()")).scalar() == pid[0]
        stats = p.stats()
        assert (stats.idle, stats.connections_lost, stats.connections_replaced) == (1, 0, 0)


async def test_forgotten_lease_is_reclaimed(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1), db, leak_check_interval=0.05) as p:

        async def forgetful() -> None:
            await pool.acquire("p")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forgetful)
        with trio.fail_after(10):
            await p.wait_for(lambda s: s.leaked == 1 and s.idle == 1)
        assert (await pool.query("p", "SELECT 1")).scalar() == 1


async def test_released_lease_cannot_be_used(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1), db):
        lease = await pool.acquire("p")
        await lease.release()
        await lease.release()  # idempotent
        with pytest.raises(pool.PoolError, match="released"):
            lease.connection  # noqa: B018


async def test_cancelled_inside_a_transaction_rolls_back_and_keeps_the_connection(
    db: DatabaseConfig, admin: Admin
) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        await pool.query("p", "CREATE TABLE tx_cancel (x int)")
        started = trio.Event()
        pid: list[int] = []

        async def writer() -> None:
            async with pool.transaction("p") as conn:
                pid.append(conn.info.backend_pid)
                await conn.execute("INSERT INTO tx_cancel VALUES (1)")
                started.set()
                await conn.execute("SELECT pg_sleep(30)")

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                await started.wait()
                await admin.wait_state(pid[0], "active")
                nursery.cancel_scope.cancel()
        assert (await pool.query("p", "SELECT count(*) FROM tx_cancel")).scalar() == 0
        assert (await pool.query("p", "SELECT pg_backend_pid()")).scalar() == pid[0]
        stats = p.stats()
        assert stats.connections_lost == stats.connections_replaced == 0


async def test_on_demand_growth_under_load_never_exceeds_max(db: DatabaseConfig) -> None:
    config = pool_config((1, 4), max_idle=0.2)
    sizes: list[int] = []
    async with pool.open_pool("p", config, db) as p:

        async def client(task: int) -> None:
            for n in range(30):
                async with pool.connection("p") as conn:
                    sizes.append(p.stats().size)
                    await conn.execute("SELECT %s::int", (n,))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for task in range(20):
                    nursery.start_soon(client, task)
        assert max(sizes) == 4
        stats = p.stats()
        assert stats.checkouts == 600 and stats.timeouts == 0
        with trio.fail_after(10):
            await p.wait_for(lambda s: s.size == 1 and s.idle == 1)
        assert p.stats().connections_closed_idle == 3
