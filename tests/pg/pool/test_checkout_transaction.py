"""pool.transaction(): its round trips; a failure raises at the statement, the connection clean."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from pool_helpers import Admin, pool_config
from psycopg import pq

from otpy.pg import pool
from otpy.pg.config import DatabaseConfig


@contextmanager
def round_trips(conn: Any, path: Path) -> Iterator[list[str]]:
    """Trace the protocol messages of ``conn`` (libpq's PQtrace) into the yielded list.

    Each ``ReadyForQuery`` the server sends ends one round trip: the client
    waited for the server that many times.
    """
    messages: list[str] = []
    with path.open("w") as f:
        conn.pgconn.trace(f.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield messages
        finally:
            conn.pgconn.untrace()  # flushes libpq's trace stream
    messages.extend(line.split("\t")[0] + " " + line.split("\t")[2] for line in _lines(path))


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.count("\t") >= 2]


@asynccontextmanager
async def accounts(db: DatabaseConfig) -> AsyncIterator[pool.Pool]:
    """A pool of one connection (so that the next checkout gets the same one) and a table."""
    async with pool.open_pool("p", pool_config(1), db) as p:
        await pool.query("p", "DROP TABLE IF EXISTS acc")
        await pool.query("p", "CREATE TABLE acc (id int PRIMARY KEY, v int)")
        await pool.query("p", "INSERT INTO acc VALUES (1, 10), (2, 20)")
        yield p


async def _values(p: pool.Pool) -> list[tuple[int, int]]:
    return list(await p.query("SELECT id, v FROM acc ORDER BY id"))


async def test_a_transaction_costs_one_round_trip_per_statement_and_none_to_check_in(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    async with accounts(db) as p:
        async with p.connection() as conn:  # the pool's only connection
            pass
        with round_trips(conn, tmp_path / "trace") as messages:
            async with p.transaction() as tx_conn:
                assert tx_conn is conn
                cur = await conn.execute("SELECT v FROM acc WHERE id = %s FOR UPDATE", (1,))
                assert await cur.fetchone() == (10,)
                await conn.execute("UPDATE acc SET v = %s WHERE id = %s", (11, 1))
                await conn.execute("INSERT INTO acc VALUES (%s, %s)", (3, 30))
            async with p.connection() as again:  # check-in and check-out: no reset
                assert again is conn
        # BEGIN, SELECT, UPDATE, INSERT, COMMIT: one round trip each, nothing more.
        assert messages.count("B ReadyForQuery") == 5
        assert await _values(p) == [(1, 11), (2, 20), (3, 30)]


async def test_a_failing_first_statement_raises_there_and_leaves_the_connection_clean(
    db: DatabaseConfig,
) -> None:
    async with accounts(db) as p:
        reached = False
        with pytest.raises(psycopg.errors.UniqueViolation):
            async with p.transaction() as conn:
                await conn.execute("INSERT INTO acc VALUES (%s, %s)", (1, 99))
                reached = True
        assert not reached
        async with p.connection() as again:
            assert again is conn
            assert again.info.transaction_status == pq.TransactionStatus.IDLE
        assert p.stats().rollbacks == 0  # the transaction rolled back itself
        assert await _values(p) == [(1, 10), (2, 20)]


async def test_a_transaction_failing_midway_raises_at_the_failing_statement_and_rolls_back(
    db: DatabaseConfig,
) -> None:
    async with accounts(db) as p:
        with pytest.raises(psycopg.errors.UniqueViolation) as raised:
            async with p.transaction() as conn:
                await conn.execute("UPDATE acc SET v = %s WHERE id = %s", (0, 1))
                try:
                    await conn.execute("INSERT INTO acc VALUES (%s, %s)", (2, 0))
                except psycopg.errors.UniqueViolation:
                    assert conn.info.transaction_status == pq.TransactionStatus.INERROR
                    raise
        assert "acc_pkey" in str(raised.value)
        assert await _values(p) == [(1, 10), (2, 20)]
        assert p.stats().rollbacks == 0


async def test_a_nested_transaction_is_a_savepoint_of_the_pool_transaction(
    db: DatabaseConfig,
) -> None:
    async with accounts(db) as p:
        with pytest.raises(RuntimeError, match="outer"):
            async with p.transaction() as conn:
                async with conn.transaction():
                    await conn.execute("UPDATE acc SET v = 0 WHERE id = 1")
                # still inside the outer transaction: nothing committed yet
                assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
                raise RuntimeError("outer")
        assert await _values(p) == [(1, 10), (2, 20)]


async def test_a_cancelled_first_statement_is_cancelled_on_the_server_and_the_connection_reused(
    db: DatabaseConfig, admin: Admin
) -> None:
    async with accounts(db) as p:
        with trio.move_on_after(0.3) as scope:
            async with p.transaction() as conn:
                await conn.execute("SELECT pg_sleep(%s)", (30,))
        assert scope.cancelled_caught
        (pid,) = await admin.backends()
        await admin.wait_state(pid, "idle")
        async with p.transaction() as again:
            assert again is conn
            cur = await again.execute("SELECT v FROM acc WHERE id = %s", (2,))
            assert await cur.fetchone() == (20,)
        assert await _values(p) == [(1, 10), (2, 20)]
