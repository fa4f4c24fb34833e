"""The public API against a real server: query, connection, transaction, stats, lookup."""

from __future__ import annotations

import psycopg
import pytest
import trio
from pool_helpers import Admin, pool_config
from psycopg import pq

import otpy
from otpy.pg import pool
from otpy.pg.config import DatabaseConfig
from otpy.pg.errors import PgConnectorError


async def test_query_returns_rows_columns_and_count(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(2), db):
        result = await pool.query("p", "SELECT %s::int AS n, %s::text AS s", (7, "x"))
        assert result == pool.QueryResult(("n", "s"), [(7, "x")], 1, "SELECT 1")
        assert result.scalar() == 7
        assert result.dicts() == [{"n": 7, "s": "x"}]
        await pool.query("p", "CREATE TABLE items (id serial PRIMARY KEY, v text)")
        inserted = await pool.query("p", "INSERT INTO items (v) VALUES ('a'), ('b')")
        assert (inserted.columns, list(inserted), inserted.rowcount) == ((), [], 2)
        assert inserted.status == "INSERT 0 2"
        returning = await pool.query("p", "INSERT INTO items (v) VALUES (%s) RETURNING id", ("c",))
        assert returning.scalar() == 3
        # autocommit: visible from another connection at once
        async with pool.connection("p") as c1, pool.connection("p") as c2:
            assert c1 is not c2
            await c1.execute("INSERT INTO items (v) VALUES ('d')")
            cur = await c2.execute("SELECT count(*) FROM items")
            assert await cur.fetchone() == (4,)


async def test_query_errors_are_psycopg_errors_and_connection_is_reused(
    db: DatabaseConfig,
) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        with pytest.raises(psycopg.errors.UndefinedTable):
            await pool.query("p", "SELECT * FROM no_such_table")
        assert (await pool.query("p", "SELECT 1")).scalar() == 1
        stats = p.stats()
        assert stats.connections_opened == 1
        assert stats.connections_replaced == stats.connections_lost == 0


async def test_query_accepts_a_checked_out_connection(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1), db), pool.connection("p") as conn:
        assert (await pool.query(conn, "SELECT 41 + 1")).scalar() == 42


async def test_connection_is_returned_whatever_happens_in_the_block(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        with pytest.raises(ZeroDivisionError):
            async with pool.connection("p"):
                1 / 0  # noqa: B018
        with trio.move_on_after(0.05):
            async with pool.connection("p"):
                await trio.sleep_forever()
        stats = p.stats()
        assert (stats.idle, stats.in_use, stats.checkouts) == (1, 0, 2)
        assert (await pool.query("p", "SELECT 1")).scalar() == 1


async def test_transaction_commits_or_rolls_back(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(2), db) as p:
        await pool.query("p", "CREATE TABLE acc (id int PRIMARY KEY, v int)")
        async with pool.transaction("p") as conn:
            await conn.execute("INSERT INTO acc VALUES (1, 10)")
            # not visible outside before COMMIT
            assert (await pool.query("p", "SELECT count(*) FROM acc")).scalar() == 0
            assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
        assert (await pool.query("p", "SELECT v FROM acc")).scalar() == 10

        with pytest.raises(RuntimeError, match="boom"):
            async with p.transaction() as conn:
                await conn.execute("UPDATE acc SET v = 20")
                raise RuntimeError("boom")
        assert (await pool.query("p", "SELECT v FROM acc")).scalar() == 10

        async with pool.transaction("p") as conn:
            await conn.execute("UPDATE acc SET v = 30")
            raise psycopg.Rollback()
        assert (await pool.query("p", "SELECT v FROM acc")).scalar() == 10
        # a failing COMMIT (deferred constraint) raises; the connection stays usable
        await pool.query(
            "p",
            "CREATE TABLE d (x int UNIQUE DEFERRABLE INITIALLY DEFERRED)",
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            async with pool.transaction("p") as conn:
                await conn.execute("INSERT INTO d VALUES (1), (1)")
        assert p.stats().rollbacks == 0  # psycopg's transaction() cleaned up itself
        assert (await pool.query("p", "SELECT count(*) FROM d")).scalar() == 0


async def test_pools_are_found_by_name_from_any_task(db: DatabaseConfig) -> None:
    results: list[int] = []

    async def elsewhere(i: int) -> None:
        results.append((await pool.query("main_pool", "SELECT %s::int", (i,))).scalar())

    async with pool.open_pool("main_pool", pool_config(2), db):
        assert otpy.whereis(pool.pool_key("main_pool")) is not None
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(elsewhere, i)
    assert sorted(results) == [0, 1, 2, 3, 4]
    assert otpy.whereis(pool.pool_key("main_pool")) is None


async def test_unknown_pool_is_a_clear_error() -> None:
    with pytest.raises(pool.PoolNotFound, match="no pool named 'nope'") as info:
        await pool.query("nope", "SELECT 1")
    assert isinstance(info.value, PgConnectorError)
    assert info.value.pool == "nope"
    with pytest.raises(pool.PoolNotFound):
        pool.stats("nope")


async def test_query_timeout_cancels_the_statement_on_the_server(
    db: DatabaseConfig, admin: Admin
) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        pid = (await pool.query("p", "SELECT pg_backend_pid()")).scalar()
        with pytest.raises(pool.QueryTimeout, match=r"0\.2 s"):
            await pool.query("p", "SELECT pg_sleep(30)", timeout=0.2)
        assert await admin.scalar("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)) in (
            "idle",
        )
        assert (await pool.query("p", "SELECT pg_backend_pid()")).scalar() == pid
        assert p.stats().connections_lost == 0


async def test_stats_snapshot(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config((1, 3)), db) as p:
        async with pool.connection("p"):
            stats = pool.stats("p")
            assert (stats.size, stats.idle, stats.in_use, stats.waiting) == (1, 0, 1, 0)
            assert (stats.min_size, stats.max_size) == (1, 3)
        stats = p.stats()
        assert stats.checkouts == 1
        assert stats.wait_histogram[0] == (0.001, 1)
        assert stats.connections_opened == 1
        assert not stats.down and stats.last_error is None
