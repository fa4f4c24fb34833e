"""The four checkout paths agree: connection(), transaction(), query() and acquire().

Each path inlines the checkout and the check-in (the hot path: see
:mod:`otpy.pg.pool.checkout`), so one test, run once per path, checks that
they behave the same where they must: the timeout error and its numbers,
invalid timeouts, a pool that stops under a waiting caller and a stopped
pool, a waiting caller cancelled, connections returned in a transaction, in
error or closed, and the leak accounting after a holder is cancelled.

``query()`` takes no block of the caller's: its statement runner
(``checkout._run_query``) is replaced for the test by the scenario's action,
so that the same action runs on the connection each path lends.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
import trio
from pool_helpers import Admin, pool_config
from psycopg import pq

from otpy.pg import pool
from otpy.pg.config import DatabaseConfig
from otpy.pg.connection import TrioConnection
from otpy.pg.errors import ConfigError
from otpy.pg.pool import checkout
from otpy.pg.pool.manager import lookup
from otpy.pg.pool.types import QueryResult

Action = Callable[[TrioConnection[Any]], Awaitable[None]]


class Path:
    """One way of borrowing a connection, driven the same way: ``run(name, action, limit)``."""

    def __init__(self, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.name = name
        self._monkeypatch = monkeypatch

    def __repr__(self) -> str:
        return self.name

    async def run(self, pool_name: str, action: Action, limit: float | None = None) -> None:
        if self.name == "connection":
            async with pool.connection(pool_name, timeout=limit) as conn:
                await action(conn)
        elif self.name == "transaction":
            async with pool.transaction(pool_name, timeout=limit) as conn:
                await action(conn)
        elif self.name == "acquire":
            lease = await pool.acquire(pool_name, timeout=limit)
            try:
                await action(lease.connection)
            finally:
                await lease.release()
        else:

            async def run_query(conn: TrioConnection[Any], sql: Any, params: Any) -> QueryResult:
                await action(conn)
                return QueryResult((), [], -1)

            self._monkeypatch.setattr(checkout, "_run_query", run_query)
            await pool.query(pool_name, "SELECT 1", checkout_timeout=limit)


async def nothing(conn: TrioConnection[Any]) -> None:
    await conn.execute("SELECT 1")


async def begin(conn: TrioConnection[Any]) -> None:
    # Inside transaction() this only warns ("already a transaction in progress").
    await conn.execute("BEGIN")


async def fail_in_transaction(conn: TrioConnection[Any]) -> None:
    await conn.execute("BEGIN")
    await conn.execute("SELECT 1 / 0")


async def close(conn: TrioConnection[Any]) -> None:
    await conn.close()


async def hold_forever(conn: TrioConnection[Any]) -> None:
    await trio.sleep_forever()


async def until(p: pool.Pool, predicate: Callable[[pool.PoolStats], bool]) -> None:
    with trio.fail_after(10):
        await p.wait_for(predicate)


async def next_connection_is_clean(admin: Admin) -> list[int]:
    """The next caller gets an idle autocommit connection; return the pool's backends."""
    async with pool.connection("p") as conn:
        assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        assert conn.autocommit
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
    return await admin.backends()


@pytest.mark.parametrize("path_name", ["connection", "transaction", "query", "acquire"])
async def test_the_checkout_paths_agree(
    path_name: str, db: DatabaseConfig, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(path_name, monkeypatch)
    in_transaction_block = path_name == "transaction"

    failures: list[BaseException] = []

    async def wait_for_stop() -> None:
        try:
            await path.run("p", nothing)
        except pool.PoolClosed as exc:
            failures.append(exc)

    # An invalid timeout is refused at once, even with a connection free.
    async with trio.open_nursery() as outer, pool.open_pool("p", pool_config(1), db) as p:
        for bad in (math.nan, math.inf, -1.0):
            with pytest.raises(ConfigError):
                await path.run("p", nothing, limit=bad)

        # Nothing free within the timeout: PoolTimeout with the pool's numbers.
        lease = await pool.acquire("p")
        with pytest.raises(pool.PoolTimeout) as info:
            await path.run("p", nothing, limit=0.2)
        error = info.value
        assert (error.pool, error.timeout, error.size, error.waiting) == ("p", 0.2, 1, 0)
        assert "no connection became free within 0.2 s" in str(error)
        assert p.stats().timeouts == 1

        # A waiting caller cancelled leaves the queue; the connection is not lost.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(path.run, "p", nothing)
            await until(p, lambda s: s.waiting == 1)
            nursery.cancel_scope.cancel()
        stats = p.stats()
        assert (stats.waiting, stats.cancelled_waits) == (0, 1)
        await lease.release()
        await until(p, lambda s: s.idle == 1)
        [backend] = await admin.wait_backends(1)

        # Returned in a transaction: rolled back (by psycopg's transaction
        # block for transaction(), else by the worker), then reused.
        await path.run("p", begin)
        await until(p, lambda s: s.idle == 1)
        assert await next_connection_is_clean(admin) == [backend]
        assert p.stats().rollbacks == (0 if in_transaction_block else 1)

        # Returned in error: the error reaches the caller, the connection is reused.
        with pytest.raises(psycopg.errors.DivisionByZero):
            await path.run("p", fail_in_transaction)
        await until(p, lambda s: s.idle == 1)
        assert await next_connection_is_clean(admin) == [backend]
        assert p.stats().rollbacks == (0 if in_transaction_block else 2)

        # Returned closed: replaced by a new connection.
        await path.run("p", close)
        await until(p, lambda s: s.idle == 1)
        [replacement] = await admin.wait_backends(1)
        assert replacement != backend
        assert await next_connection_is_clean(admin) == [replacement]
        assert p.stats().connections_lost == 1

        # A holder cancelled gives the connection back: nothing for the leak sweep.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(path.run, "p", hold_forever)
            await until(p, lambda s: s.in_use == 1)
            nursery.cancel_scope.cancel()
        assert p.stats().in_use == 0
        assert lookup("p").reclaim_leaks() == 0

        # A caller waiting when the pool stops gets PoolClosed.
        lease = await pool.acquire("p")
        outer.start_soon(wait_for_stop)
        await until(p, lambda s: s.waiting == 1)
        final = p.stats()
        assert (final.leaked, final.timeouts, final.cancelled_waits) == (0, 1, 1)
    assert [type(f) for f in failures] == [pool.PoolClosed]
    await lease.release()  # the caller closes a connection its stopped pool lent

    # A stopped pool is not found by name.
    with pytest.raises(pool.PoolNotFound):
        await path.run("p", nothing)
