"""Fixtures of the pool tests: a database config per test, helpers to watch backends."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from pool_helpers import Admin
from psycopg.conninfo import conninfo_to_dict

from otpy.pg.config import DatabaseConfig, Secret
from otpy.pg.connection import TrioConnection

_ids = itertools.count(1)


@pytest.fixture
def app_name() -> str:
    """A unique application_name, to find this test's backends in pg_stat_activity."""
    return f"otpy_pool_test_{next(_ids)}"


@pytest.fixture
def db(module_dsn: str, app_name: str) -> DatabaseConfig:
    """The test module's database as a DatabaseConfig."""
    params = conninfo_to_dict(module_dsn)
    password = params.get("password")
    return DatabaseConfig(
        name="db",
        database=str(params["dbname"]),
        username=str(params["user"]),
        host=str(params.get("host", "localhost")),
        port=int(params.get("port", 5432)),
        password=Secret(str(password)) if password else None,
        application_name=app_name,
        connect_timeout=5.0,
    )


@pytest.fixture
async def admin(pg_dsn: str, app_name: str) -> Any:
    conn = await TrioConnection.connect(pg_dsn, autocommit=True)
    try:
        yield Admin(conn, app_name)
    finally:
        await conn.close()
