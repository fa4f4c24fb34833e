"""Fixtures of the failure-policy and manual-acknowledgement tests.

They reuse the WAL reader tests' helpers (``wr_helpers``) and run against the
session's real PostgreSQL; nothing is mocked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from otpy.pg import pool
from otpy.pg.config import DatabaseConfig, PoolConfig


@pytest.fixture
async def dl_pool(module_dsn: str) -> AsyncIterator[pool.Pool]:
    """An otpy pool named ``dl`` on the test module's database, for dead letters."""
    config = PoolConfig(name="dl", database="db", min_size=1, max_size=3, checkout_timeout=5.0)
    async with pool.open_pool("dl", config, DatabaseConfig.from_dsn("db", module_dsn)) as p:
        yield p
