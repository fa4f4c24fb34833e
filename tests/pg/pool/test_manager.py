"""The pool as a supervision tree: crashes stay local, nothing leaks, pool_spec works."""

from __future__ import annotations

import itertools

import pytest
import trio
from pool_helpers import Admin, pool_config

import otpy
from otpy.pg import pool
from otpy.pg.config import DatabaseConfig


async def test_crashing_worker_does_not_take_the_pool_down(
    db: DatabaseConfig, admin: Admin
) -> None:
    async with pool.open_pool("p", pool_config(2), db) as p:
        held = await pool.acquire("p")
        victim = await pool.acquire("p")
        victim_pid = victim.connection.info.backend_pid
        worker = victim._slot.worker  # type: ignore[union-attr]
        await victim.release()
        otpy.cast(worker.ref, "not a request")  # crashes the worker (unexpected cast)
        assert (await worker.ref.wait()).abnormal
        with trio.fail_after(10):
            await p.wait_for(lambda s: s.size == 2 and s.connecting == 0)
        # the other connection was never disturbed
        assert (await pool.query(held.connection, "SELECT 1")).scalar() == 1
        await held.release()
        pids = await admin.wait_backends(2)
        assert victim_pid not in pids


async def test_manager_crash_leaks_no_connection(db: DatabaseConfig, admin: Admin) -> None:
    async with pool.open_pool("p", pool_config(3), db) as p:
        old_pids = await admin.wait_backends(3)
        manager = otpy.whereis(pool.pool_key("p"))
        assert manager is not None
        held = await pool.acquire("p")
        failures: list[BaseException] = []

        async def waiter() -> None:
            try:
                async with pool.connection("p"):
                    pass
            except pool.PoolClosed as exc:
                failures.append(exc)

        extra = [await pool.acquire("p") for _ in range(2)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            with trio.fail_after(10):
                await p.wait_for(lambda s: s.waiting == 1)
            otpy.cast(manager, "not a request")  # crashes the manager
            assert (await manager.wait()).abnormal
        assert len(failures) == 1  # the waiter learnt at once, no timeout
        # The restarted tree opened 3 new connections; the held ones are closed at check-in.
        with trio.fail_after(10):
            await p.wait_for(lambda s: s.size == 3 and s.connecting == 0)
        for lease in [held, *extra]:
            await lease.release()
        new_pids = await admin.wait_backends(3)
        assert not set(new_pids) & set(old_pids)
        assert otpy.whereis(pool.pool_key("p")) not in (None, manager)
        assert (await pool.query("p", "SELECT 1")).scalar() == 1


async def test_pool_spec_under_a_supervisor(db: DatabaseConfig, admin: Admin) -> None:
    spec = pool.pool_spec("main_pool", pool_config((1, 2)), db)
    assert spec.id == ("otpy.pg.pool", "main_pool")
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([spec]))
        stats = await pool.wait_ready("main_pool")
        assert stats.size == 1
        assert (await pool.query("main_pool", "SELECT 3")).scalar() == 3
        await otpy.stop(sup)
    with pytest.raises(pool.PoolNotFound):
        pool.stats("main_pool")
    await admin.wait_backends(0)


async def test_pool_starts_while_the_server_is_unreachable(db: DatabaseConfig) -> None:
    unreachable = type(db)(
        name="db", database=db.database, username=db.username, host="127.0.0.1", port=1
    )
    async with pool.open_pool("p", pool_config(1), unreachable, wait=False) as p:
        with trio.fail_after(10):
            await p.wait_for(lambda s: s.down)
        with pytest.raises(pool.PoolUnavailable, match=r"127\.0\.0\.1") as info:
            await pool.query("p", "SELECT 1")
        assert "port=1" in info.value.last_error
        assert p.stats().connection_errors >= 1
        with pytest.raises(pool.PoolUnavailable):
            await p.wait_ready()


async def test_password_never_appears_in_errors(db: DatabaseConfig) -> None:
    from otpy.pg.config import Secret

    wrong = type(db)(
        name="db",
        database=db.database,
        username="no_such_user_xyz",
        host=db.host,
        port=db.port,
        password=Secret("s3cr3t-Pa55"),
    )
    async with pool.open_pool("p", pool_config(1), wrong, wait=False) as p:
        with trio.fail_after(10):
            await p.wait_for(lambda s: s.down)
        with pytest.raises(pool.PoolUnavailable) as info:
            await pool.query("p", "SELECT 1")
        assert "s3cr3t-Pa55" not in str(info.value)
        assert "s3cr3t-Pa55" not in repr(p.stats())


async def test_reconnect_attempts_follow_the_backoff(
    db: DatabaseConfig, autojump_clock: trio.testing.MockClock
) -> None:
    """Attempts to an unreachable server are spaced by the configured back-off.

    The clock is virtual (it jumps whenever every task waits), so the back-off
    delays, up to seconds, pass instantly and are measured exactly.
    """
    import logging

    from otpy.pg.config import Backoff

    unreachable = type(db)(
        name="db", database=db.database, username=db.username, host="127.0.0.1", port=1
    )
    attempts: list[float] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "event", None) == "pool_connect_failed":
                attempts.append(trio.current_time())

    handler = Recorder()
    logger = logging.getLogger("otpy.pg.pool")
    logger.addHandler(handler)
    backoff = Backoff(initial=0.5, maximum=4.0, multiplier=2.0, jitter=0.0)
    try:
        config = pool_config(1, reconnect=backoff)
        async with pool.open_pool("p", config, unreachable, wait=False) as p:
            with trio.fail_after(60):
                await p.wait_for(lambda s: s.connection_errors >= 6)
    finally:
        logger.removeHandler(handler)
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    expected = [0.5, 1.0, 2.0, 4.0, 4.0]
    assert len(gaps) >= 5
    for gap, delay in zip(gaps, expected, strict=False):
        assert gap >= delay
        assert gap < delay + 2.0  # the next attempt comes right after its delay
