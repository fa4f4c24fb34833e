"""Shared fixtures: one throw-away PostgreSQL for the whole test session.

``pg_dsn`` is the superuser DSN of that server (or of ``$OTPY_TEST_DSN``).
``pg_server`` is the :class:`otpy.testing.PostgresServer` itself, for tests that
stop or restart it; such tests are skipped against an external server.
``module_dsn`` is a database of the test module's own, for isolation.

Servers differ (PostgreSQL 15 from Debian, 18 from the embedded wheel, which
has no XML support): ``@pytest.mark.requires("xml", "hstore", ...)`` skips a
test, with the reason, on a server that lacks a feature; ``server_features``
answers the same question inside a test or fixture (see :class:`ServerFeatures`).
"""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Iterator

import psycopg
import pytest

from otpy.testing import (
    PostgresServer,
    TestingError,
    create_database,
    drop_database,
    external_dsn,
    find_bindir,
)


def pytest_report_header() -> str:
    """Which server the run tests: the matrix in CI runs the suite once per server."""
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


class ServerFeatures:
    """What the test server can do, probed once per server and remembered.

    Feature names: ``xml`` (built with libxml), ``test_decoding`` (the output
    plugin), ``pgNN`` (server version >= NN, e.g. ``pg16``), and any other
    name is an extension that must be available (``hstore``, ``citext``...).
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        with psycopg.connect(dsn) as conn:
            self.version_num = conn.info.server_version

    @functools.cache  # noqa: B019 - one instance per server, kept for the session
    def lacks(self, feature: str) -> str | None:
        """Why the server lacks ``feature``, or ``None`` when it has it."""
        if m := re.fullmatch(r"pg(\d+)", feature):
            major = self.version_num // 10000
            return None if major >= int(m[1]) else f"PostgreSQL {major} < {m[1]}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            if feature == "xml":
                try:
                    conn.execute("SELECT '<a/>'::xml")
                except psycopg.errors.FeatureNotSupported as exc:
                    return f"no XML support ({exc.diag.message_primary})"
                return None
            if feature == "test_decoding":  # an output plugin: a library, no extension
                row = conn.execute(
                    "SELECT count(*) FROM pg_ls_dir("
                    "(SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR')) AS f "
                    "WHERE f LIKE 'test\\_decoding.%'"
                ).fetchone()
                return None if row and row[0] else "no test_decoding plugin in PKGLIBDIR"
            row = conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = %s", [feature]
            ).fetchone()
            return None if row else f"no extension {feature!r}"

    def skip_unless(self, *features: str) -> None:
        """Skip the calling test, with the reasons, unless the server has every feature."""
        reasons = [f"{f}: {why}" for f in features if (why := self.lacks(f))]
        if reasons:
            pytest.skip("the server lacks " + "; ".join(reasons))


@pytest.fixture(scope="session")
def server_features(pg_dsn: str) -> ServerFeatures:
    """What the session's server can do (see :class:`ServerFeatures`)."""
    return ServerFeatures(pg_dsn)


@pytest.fixture(autouse=True)
def _skip_unless_server_has(request: pytest.FixtureRequest) -> None:
    """Honours ``@pytest.mark.requires(...)``: skip when the server lacks a feature."""
    marker = request.node.get_closest_marker("requires")
    if marker is not None:
        features: ServerFeatures = request.getfixturevalue("server_features")
        features.skip_unless(*marker.args)


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
