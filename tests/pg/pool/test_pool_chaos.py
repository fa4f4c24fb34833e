"""Backends killed with pg_terminate_backend under load: results or clear errors, no hang."""

from __future__ import annotations

import random

import psycopg
import pytest
import trio
from pool_helpers import Admin, pool_config

from otpy.pg import pool
from otpy.pg.config import DatabaseConfig

pytestmark = pytest.mark.slow

TASKS = 32
SIZE = 8
ROUNDS = 300


async def test_backends_killed_under_load(db: DatabaseConfig, admin: Admin) -> None:
    config = pool_config(SIZE, checkout_timeout=10.0, health_check_interval=0.5)
    ok = 0
    errors: list[BaseException] = []
    kills = 0
    async with pool.open_pool("p", config, db) as p:
        await pool.query("p", "CREATE TABLE chaos (task int, n int)")

        async def client(task: int) -> None:
            nonlocal ok
            for n in range(ROUNDS):
                try:
                    if n % 3 == 0:
                        async with pool.transaction("p") as conn:
                            await conn.execute("INSERT INTO chaos VALUES (%s, %s)", (task, n))
                    else:
                        result = await pool.query("p", "SELECT %s::int", (n,))
                        assert result.scalar() == n
                    ok += 1
                except (psycopg.OperationalError, pool.PoolError) as exc:
                    errors.append(exc)

        async def killer() -> None:
            nonlocal kills
            rng = random.Random(5)
            while True:
                pids = await admin.backends()
                if pids:
                    kills += await admin.terminate(rng.choice(pids))
                await trio.sleep(0.01)  # the pace of the chaos, not a wait for something

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                async with trio.open_nursery() as clients:
                    for task in range(TASKS):
                        clients.start_soon(client, task)
                nursery.cancel_scope.cancel()

        assert ok + len(errors) == TASKS * ROUNDS
        assert kills > 10
        assert ok > len(errors)
        for exc in errors:  # every failure is a clear connection-level error
            assert isinstance(exc, psycopg.OperationalError | pool.PoolTimeout), repr(exc)
        # The pool refills and nothing leaked.
        with trio.fail_after(30):
            await p.wait_for(lambda s: s.idle == SIZE and s.connecting == 0 and s.busy == 0)
        stats = p.stats()
        assert stats.connections_lost + stats.connections_replaced >= 1
        assert stats.in_use == 0 and stats.waiting == 0
        core = p._resolve()  # internal bookkeeping agrees with the slots' states
        assert (core.connecting, core.pending_grow, len(core.idle)) == (0, 0, SIZE)
        await admin.wait_backends(SIZE)
        assert (await pool.query("p", "SELECT count(*) FROM chaos")).scalar() >= 0
