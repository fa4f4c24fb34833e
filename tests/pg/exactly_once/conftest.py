"""Fixtures of the exactly-once tests: a source (``module_dsn``), a target database and pool.

The target is another database of the same test server, reached through an
otpy pool, as a production target would be.  Replication origins are
cluster-wide, so every test uses origin and slot names of its own.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest

from otpy.pg import pool
from otpy.pg.config import DatabaseConfig, PoolConfig
from otpy.pg.testing import create_database, drop_database


@pytest.fixture(scope="module")
def target_dsn(pg_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of the module's target database (another database of the same server)."""
    name = "tgt_" + re.sub(r"\W", "_", request.module.__name__.rsplit(".", 1)[-1])[:58]
    dsn = create_database(pg_dsn, name)
    yield dsn
    drop_database(pg_dsn, name)


@pytest.fixture
async def target_pool(target_dsn: str) -> AsyncIterator[pool.Pool]:
    """Pool ``target`` on the target database, for one test."""
    database = DatabaseConfig.from_dsn("target", target_dsn)
    config = PoolConfig(name="target", database="target", min_size=1, max_size=3)
    async with pool.open_pool("target", config, database) as handle:
        yield handle


@pytest.fixture(autouse=True)
def _drop_new_origins(pg_dsn: str) -> Iterator[None]:
    """Drop the replication origins a test created: each holds a server slot until dropped.

    (``max_active_replication_origins`` on PostgreSQL 18, ``max_replication_slots``
    before; the catalog is cluster-wide.)
    """
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        before = {r[0] for r in conn.execute("SELECT roname FROM pg_replication_origin")}
    yield
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT roname FROM pg_replication_origin").fetchall():
            if name not in before:
                conn.execute("SELECT pg_replication_origin_drop(%s)", [name])
