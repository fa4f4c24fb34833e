"""Fixtures of the observability tests: a readers supervisor, a pool's database config.

Everything runs against the session's real PostgreSQL; the helpers of the WAL
reader and pool tests are reused (their folders are put on ``sys.path``).
"""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from otpy.pg.config import DatabaseConfig, Secret


@pytest.fixture
def db(module_dsn: str) -> DatabaseConfig:
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
        connect_timeout=5.0,
    )
