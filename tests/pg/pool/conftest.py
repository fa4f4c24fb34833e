"""Fixtures of the pool tests: a database config per test, helpers to watch backends."""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import pytest
from pool_helpers import Admin

from otpy.pg.config import DatabaseConfig
from otpy.pg.connection import TrioConnection

_ids = itertools.count(1)


@pytest.fixture
def app_name() -> str:
    """A unique application_name, to find this test's backends in pg_stat_activity."""
    return f"otpy_pool_test_{next(_ids)}"


@pytest.fixture
def db(db: DatabaseConfig, app_name: str) -> DatabaseConfig:
    """The test module's database (tests/pg/conftest.py), with this test's application_name."""
    return attrs.evolve(db, application_name=app_name)


@pytest.fixture
async def admin(pg_dsn: str, app_name: str) -> Any:
    conn = await TrioConnection.connect(pg_dsn, autocommit=True)
    try:
        yield Admin(conn, app_name)
    finally:
        await conn.close()
