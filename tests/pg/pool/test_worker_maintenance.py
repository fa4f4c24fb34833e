"""Idle connections are health-checked, replaced after max_lifetime, closed after max_idle."""

from __future__ import annotations

import trio
from pool_helpers import Admin, pool_config

from otpy.pg import pool
from otpy.pg.config import DatabaseConfig


async def test_health_check_replaces_a_backend_killed_while_idle(
    db: DatabaseConfig, admin: Admin
) -> None:
    async with pool.open_pool("p", pool_config(2, health_check_interval=0.05), db) as p:
        pids = await admin.wait_backends(2)
        assert await admin.terminate(pids[0])
        with trio.fail_after(10):
            await p.wait_for(lambda s: s.connections_lost == 1 and s.idle == 2)
        # No caller ever saw the dead connection.
        for _ in range(4):
            async with pool.connection("p") as conn:
                assert conn.info.backend_pid != pids[0]
                await conn.execute("SELECT 1")
        assert p.stats().health_checks >= 1


async def test_max_lifetime_replaces_connections(db: DatabaseConfig, admin: Admin) -> None:
    async with pool.open_pool("p", pool_config(1, max_lifetime=0.2), db) as p:
        first = (await pool.query("p", "SELECT pg_backend_pid()")).scalar()
        with trio.fail_after(10):
            await p.wait_for(lambda s: s.connections_replaced >= 1 and s.idle == 1)
        second = (await pool.query("p", "SELECT pg_backend_pid()")).scalar()
        assert second != first


async def test_expired_connection_in_use_is_replaced_at_check_in(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1, max_lifetime=0.1), db) as p:
        async with pool.connection("p") as conn:
            first = conn.info.backend_pid
            await conn.execute("SELECT pg_sleep(0.2)")
        async with pool.connection("p") as conn:
            assert conn.info.backend_pid != first
        assert p.stats().connections_replaced >= 1
