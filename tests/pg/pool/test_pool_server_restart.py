"""The server stops and comes back: checkouts fail clearly meanwhile, then the pool recovers.

In a module of its own: it stops the session's server (always restarted in a finally).
"""

from __future__ import annotations

import psycopg
import pytest
import trio
from pool_helpers import pool_config

from otpy.pg import pool
from otpy.pg.config import Backoff, DatabaseConfig
from otpy.pg.testing import PostgresServer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_server_restart(db: DatabaseConfig, own_server: PostgresServer, mode: str) -> None:
    config = pool_config(
        2,
        checkout_timeout=2.0,
        health_check_interval=0.1,
        reconnect=Backoff(initial=0.05, maximum=0.3, jitter=0.0),
    )
    async with pool.open_pool("p", config, db) as p:
        assert (await pool.query("p", "SELECT 1")).scalar() == 1
        try:
            await trio.to_thread.run_sync(own_server.stop, mode)
            # While down: every checkout fails promptly with a clear error.
            seen: list[type[BaseException]] = []
            with trio.fail_after(20):
                while not seen or seen[-1] is not pool.PoolUnavailable:
                    try:
                        await pool.query("p", "SELECT 1")
                    except (psycopg.OperationalError, pool.PoolError) as exc:
                        seen.append(type(exc))
                    else:
                        pytest.fail("a query succeeded while the server was down")
                    if seen[-1] is not pool.PoolUnavailable:
                        await p.wait_for(lambda s: s.down or s.idle < 2)
            assert p.stats().down
            with pytest.raises(pool.PoolUnavailable, match="no connection"):
                async with pool.connection("p"):
                    pass
        finally:
            await trio.to_thread.run_sync(own_server.start)
        with trio.fail_after(30):
            await p.wait_for(lambda s: s.idle == 2 and not s.down)
        assert (await pool.query("p", "SELECT 2")).scalar() == 2
        assert p.stats().connection_errors >= 1


async def test_on_demand_only_pool_recovers(db: DatabaseConfig, own_server: PostgresServer) -> None:
    """A pool of size (0, n) has no worker retrying: each checkout makes a fresh attempt."""
    config = pool_config((0, 2), checkout_timeout=5.0)
    async with pool.open_pool("p", config, db) as p:
        assert (await pool.query("p", "SELECT 1")).scalar() == 1
        try:
            await trio.to_thread.run_sync(own_server.stop, "fast")
            with trio.fail_after(20):
                for _ in range(2):  # every attempt fails clearly, none hangs
                    with pytest.raises((pool.PoolUnavailable, psycopg.OperationalError)):
                        await pool.query("p", "SELECT 1")
                with pytest.raises(pool.PoolUnavailable):
                    await pool.query("p", "SELECT 1")
            assert p.stats().down
        finally:
            await trio.to_thread.run_sync(own_server.start)
        with trio.fail_after(20):
            assert (await pool.query("p", "SELECT 2")).scalar() == 2
        assert not p.stats().down
