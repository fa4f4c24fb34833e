"""pytest fixtures for testing code that uses otpy against a real PostgreSQL.

Installed with ``pip install 'trio-otp-pg[testing]'`` (pytest, pytest-trio and the
embedded PostgreSQL server) and loaded by pytest through the ``pytest11``
entry point: no ``conftest.py`` line is needed.  A test asks for what it uses::

    async def test_the_handler_sees_new_users(otpy_app):
        handler = MyHandler()
        sub = await wal_reader.subscribe(handler, TEST_DATABASE, "s", ["users_pub"])
        await pool.query(TEST_POOL, "INSERT INTO users (name) VALUES ('ada')")
        await wait_caught_up(sub)
        assert handler.names == ["ada"]

The fixtures, from the server up (scopes in brackets):

``otpy_pg_server`` [session]
    The throw-away :class:`~otpy.pg.testing.PostgresServer` (the embedded server
    by default; ``$OTPY_PG_BINDIR`` chooses another), or ``None`` when
    ``$OTPY_TEST_DSN`` points the run at an existing server.
``otpy_pg_dsn`` [session]
    The superuser DSN of that server.
``otpy_schema`` [session, override it]
    Your schema: SQL statements, or a function given a DSN (run your
    migrations).  Built once per session into a template database.
``otpy_template`` [session]
    The name of that template database.
``otpy_dsn`` [test] / ``otpy_module_dsn`` [module]
    A fresh database copied from the template, dropped afterwards (with its
    replication slots): a clean database per test costs a file copy, not a
    schema build.
``otpy_pools`` [test, override it]
    The pools of the connector, as ``[pools]`` tables (``database`` defaults
    to :data:`TEST_DATABASE`); one pool :data:`TEST_POOL` of 2 by default.
``otpy_config`` [test]
    A :class:`~otpy.pg.config.ConnectorConfig` with database
    :data:`TEST_DATABASE` = ``otpy_dsn`` and those pools.
``otpy_app`` [test, trio]
    The connector application running with ``otpy_config`` (pools started,
    WAL readers' supervisor ready for ``wal_reader.subscribe``); stopped after
    the test.  Yields the :class:`~otpy.application.System`.

:func:`otpy.pg.testing.wait_caught_up` waits until a reader has handled
everything committed so far.

Why template databases and not a rolled-back transaction per test (the
sandbox of Elixir's DBConnection): otpy's pool gives each caller a
connection of its own in autocommit mode and rolls back any transaction a
connection comes back with, a pool has several connections that cannot share
one transaction, and WAL readers only ever see committed transactions.  A
sandbox would have to disable exactly what tests should exercise; a copy of
a template costs tens of milliseconds more (``docs/testing.md`` has the
measured figures).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from otpy.pg.testing import (
    PostgresServer,
    Schema,
    TestingError,
    copy_strategy,
    create_database,
    create_template,
    drop_database,
    external_dsn,
    find_bindir,
    unique_name,
)

if TYPE_CHECKING:
    from otpy.application import System
    from otpy.pg.config import ConnectorConfig

__all__ = [
    "TEST_DATABASE",
    "TEST_POOL",
    "otpy_app",
    "otpy_config",
    "otpy_dsn",
    "otpy_module_dsn",
    "otpy_pg_dsn",
    "otpy_pg_server",
    "otpy_pools",
    "otpy_schema",
    "otpy_template",
    "pytest_report_header",
]

#: The name of the test database in ``otpy_config`` (what pools and
#: ``wal_reader.subscribe`` refer to).
TEST_DATABASE = "test_db"
#: The pool ``otpy_pools`` gives by default.
TEST_POOL = "test_pool"


def pytest_report_header() -> str:
    """Which server the run tests against (first lines of pytest's output)."""
    if external_dsn() is not None:
        return "PostgreSQL: the external server of $OTPY_TEST_DSN"
    try:
        bindir = find_bindir()
        version = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (TestingError, OSError, subprocess.SubprocessError) as exc:
        return f"PostgreSQL: not found ({exc})"
    return f"PostgreSQL: {version} from {bindir}"


@pytest.fixture(scope="session")
def otpy_pg_server() -> Iterator[PostgresServer | None]:
    """The session's throw-away server, or ``None`` when ``$OTPY_TEST_DSN`` is set."""
    if external_dsn() is not None:
        yield None
        return
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def otpy_pg_dsn(otpy_pg_server: PostgresServer | None) -> str:
    """Superuser DSN of the server the tests run against."""
    if otpy_pg_server is None:
        dsn = external_dsn()
        assert dsn is not None
        return dsn
    return otpy_pg_server.dsn


@pytest.fixture(scope="session")
def otpy_schema() -> Schema:
    """The schema every test database starts with (override it: none by default).

    Return SQL statements (run in order, each in autocommit) or a function
    that is given the template's DSN and builds the schema (migrations).
    """
    return None


@pytest.fixture(scope="session")
def otpy_template(otpy_pg_dsn: str, otpy_schema: Schema) -> Iterator[str]:
    """Name of the template database holding ``otpy_schema``, built once per session."""
    name = create_template(otpy_pg_dsn, unique_name("otpy_tpl"), otpy_schema)
    yield name
    drop_database(otpy_pg_dsn, name)


@pytest.fixture(scope="session")
def _otpy_copy_strategy(otpy_pg_dsn: str) -> str | None:
    """How the server copies the template fastest (:func:`otpy.pg.testing.copy_strategy`)."""
    return copy_strategy(otpy_pg_dsn)


def _fresh(pg_dsn: str, template: str, strategy: str | None, prefix: str) -> Iterator[str]:
    name = unique_name("t_" + re.sub(r"\W", "_", prefix), limit=50)
    dsn = create_database(pg_dsn, name, template=template, strategy=strategy)
    yield dsn
    drop_database(pg_dsn, name)


@pytest.fixture
def otpy_dsn(
    otpy_pg_dsn: str,
    otpy_template: str,
    _otpy_copy_strategy: str | None,
    request: pytest.FixtureRequest,
) -> Iterator[str]:
    """DSN of a fresh database for this test, a copy of the template, dropped afterwards."""
    yield from _fresh(otpy_pg_dsn, otpy_template, _otpy_copy_strategy, request.node.name)


@pytest.fixture(scope="module")
def otpy_module_dsn(
    otpy_pg_dsn: str,
    otpy_template: str,
    _otpy_copy_strategy: str | None,
    request: pytest.FixtureRequest,
) -> Iterator[str]:
    """DSN of a fresh database for the test module, a copy of the template, dropped afterwards."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    yield from _fresh(otpy_pg_dsn, otpy_template, _otpy_copy_strategy, module)


@pytest.fixture
def otpy_pools() -> Mapping[str, Mapping[str, Any]]:
    """The connector's pools as ``[pools]`` tables (override it): one pool of 2 by default."""
    return {TEST_POOL: {"size": 2}}


@pytest.fixture
def otpy_config(otpy_dsn: str, otpy_pools: Mapping[str, Mapping[str, Any]]) -> ConnectorConfig:
    """The connector configuration of the test: :data:`TEST_DATABASE` and ``otpy_pools``."""
    from otpy.pg.config import ConnectorConfig

    pools = {name: {"database": TEST_DATABASE, **table} for name, table in otpy_pools.items()}
    return ConnectorConfig.from_mapping({"databases": {TEST_DATABASE: otpy_dsn}, "pools": pools})


@pytest.fixture
async def otpy_app(otpy_config: ConnectorConfig) -> AsyncIterator[System]:
    """The connector application running for the test (needs pytest-trio)."""
    from otpy.application import start_application
    from otpy.pg.app import connector_application

    async with start_application(connector_application(otpy_config)) as system:
        yield system
