"""Shared fixtures: one throw-away PostgreSQL for the whole test session.

``pg_dsn`` is the superuser DSN of that server (or of ``$OTPY_TEST_DSN``).
``pg_server`` is the :class:`otpy.testing.PostgresServer` itself, for tests that
stop or restart it; such tests are skipped against an external server.
``module_dsn`` is a database of the test module's own, for isolation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from otpy.testing import PostgresServer, create_database, drop_database, external_dsn


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer | None]:
    """The session's throw-away server, or ``None`` when ``$OTPY_TEST_DSN`` is used."""
    if external_dsn() is not None:
        yield None
        return
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def pg_dsn(pg_server: PostgresServer | None) -> str:
    """Superuser DSN of the server the tests run against."""
    if pg_server is None:
        dsn = external_dsn()
        assert dsn is not None
        return dsn
    return pg_server.dsn


@pytest.fixture
def own_server(pg_server: PostgresServer | None) -> PostgresServer:
    """The throw-away server, for tests that stop/restart it (skipped on an external one)."""
    if pg_server is None:
        pytest.skip("needs the throw-away server (OTPY_TEST_DSN is set)")
    return pg_server


@pytest.fixture(scope="module")
def module_dsn(pg_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of a fresh database named after the test module, dropped afterwards."""
    name = "t_" + re.sub(r"\W", "_", request.module.__name__.rsplit(".", 1)[-1])[:60]
    dsn = create_database(pg_dsn, name)
    yield dsn
    drop_database(pg_dsn, name)
