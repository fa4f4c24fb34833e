"""A returned connection is never handed on as is: rolled back, reset or replaced.

And a clean one goes back without a round trip to the server.
"""

from __future__ import annotations

import contextlib

import psycopg
import trio
from pool_helpers import Admin, pool_config
from psycopg import pq
from psycopg.rows import dict_row

from otpy.pg import pool
from otpy.pg.config import DatabaseConfig

IDLE = pq.TransactionStatus.IDLE


async def settled(p: pool.Pool) -> None:
    """Wait until no connection is under maintenance (reset/replacement finished)."""
    with trio.fail_after(10):
        await p.wait_for(lambda s: s.busy == 0 and s.connecting == 0 and s.in_use == 0)


async def test_clean_return_costs_no_round_trip(db: DatabaseConfig, admin: Admin) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        async with pool.connection("p") as conn:
            pid = conn.info.backend_pid
            await conn.execute("SELECT 'marker-1'")
        for _ in range(20):
            async with pool.connection("p") as conn:
                assert conn.info.backend_pid == pid
        # The backend's last statement is still ours: no ROLLBACK, DISCARD or
        # SELECT 1 was sent on check-in or check-out.
        assert await admin.last_query(pid) == "SELECT 'marker-1'"
        assert p.stats().rollbacks == 0


async def test_returned_in_transaction_is_rolled_back(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        await pool.query("p", "CREATE TABLE t (x int)")
        async with pool.connection("p") as conn:
            pid = conn.info.backend_pid
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO t VALUES (1)")
            assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
        async with pool.connection("p") as conn:
            assert conn.info.transaction_status == IDLE
            assert conn.info.backend_pid == pid  # rolled back, not replaced
            cur = await conn.execute("SELECT count(*) FROM t")
            assert await cur.fetchone() == (0,)
        await settled(p)
        assert p.stats().rollbacks == 1


async def test_returned_in_error_is_rolled_back(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        async with pool.connection("p") as conn:
            await conn.execute("BEGIN")
            with contextlib.suppress(psycopg.errors.DivisionByZero):
                await conn.execute("SELECT 1/0")
            assert conn.info.transaction_status == pq.TransactionStatus.INERROR
        assert (await pool.query("p", "SELECT 5")).scalar() == 5
        await settled(p)
        assert p.stats().rollbacks == 1


async def test_changed_session_attributes_are_restored(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1), db):
        async with pool.connection("p") as conn:
            await conn.set_autocommit(False)
            await conn.set_read_only(True)
            conn.row_factory = dict_row  # type: ignore[assignment]
            await conn.execute("SELECT 1")  # opens a transaction (autocommit off)
        async with pool.connection("p") as conn:
            assert conn.autocommit is True
            assert conn.read_only is None
            cur = await conn.execute("SELECT 1 AS one")
            assert await cur.fetchone() == (1,)
            assert conn.info.transaction_status == IDLE


async def test_closed_connection_is_replaced(db: DatabaseConfig, admin: Admin) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        async with pool.connection("p") as conn:
            old = conn.info.backend_pid
            await conn.close()
        async with pool.connection("p") as conn:
            assert not conn.closed
            assert conn.info.backend_pid != old
        await settled(p)
        assert p.stats().connections_lost == 1
        await admin.wait_backends([conn.info.backend_pid])


async def test_busy_connection_is_replaced(db: DatabaseConfig, admin: Admin) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        async with pool.connection("p") as conn:
            old = conn.info.backend_pid
            # A query sent and never read: libpq is still ACTIVE.
            conn.pgconn.send_query(b"SELECT pg_sleep(0.01)")
            assert conn.info.transaction_status == pq.TransactionStatus.ACTIVE
        async with pool.connection("p") as conn:
            assert conn.info.transaction_status == IDLE
            assert conn.info.backend_pid != old
        await settled(p)
        stats = p.stats()
        assert stats.connections_replaced == 1
        await admin.wait_backends([conn.info.backend_pid])


async def test_connection_killed_while_held_is_replaced(db: DatabaseConfig, admin: Admin) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        async with pool.connection("p") as conn:
            old = conn.info.backend_pid
            assert await admin.terminate(old)
            with contextlib.suppress(psycopg.OperationalError):
                await conn.execute("SELECT 1")
        assert (await pool.query("p", "SELECT pg_backend_pid()")).scalar() != old
        await settled(p)
        assert p.stats().connections_lost == 1
