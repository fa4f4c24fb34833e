"""Fixtures of the observability tests: a readers supervisor, a pool's database config.

Everything runs against the session's real PostgreSQL; the helpers of the WAL
reader and pool tests are reused (their folders are put on ``sys.path``).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from psycopg.conninfo import conninfo_to_dict

from otpy import DynamicSupervisor, Ref
from otpy import start as start_actor
from otpy.pg import wal_reader
from otpy.pg.config import DatabaseConfig, Secret

_TESTS = Path(__file__).resolve().parent.parent
for folder in ("wal_reader", "pool"):
    if str(_TESTS / folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / folder))


@pytest.fixture
async def readers() -> AsyncIterator[Ref]:
    """A WAL readers supervisor registered under the default name, for one test."""
    async with trio.open_nursery() as nursery:
        sup = await start_actor(
            nursery,
            DynamicSupervisor(intensity=1000, period=60),
            name=wal_reader.READERS_SUPERVISOR,
        )
        yield sup
        nursery.cancel_scope.cancel()


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
