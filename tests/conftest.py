"""Shared fixtures: one throw-away PostgreSQL for the whole test session.

They come from otpy's own pytest plugin (:mod:`otpy.pytest_plugin`, loaded
through its ``pytest11`` entry point, so every run exercises it); the names
the suite has always used are thin aliases of the plugin's:

``pg_dsn`` is the superuser DSN of that server (or of ``$OTPY_TEST_DSN``).
``pg_server`` is the :class:`otpy.pg.testing.PostgresServer` itself, for tests that
stop or restart it; such tests are skipped against an external server.
``module_dsn`` is a database of the test module's own, for isolation.
``readers`` is a WAL readers supervisor under the default name, for one test.

Servers differ (PostgreSQL 15 from Debian, 18 from the embedded wheel, which
has no XML support): ``@pytest.mark.requires("xml", "hstore", ...)`` skips a
test, with the reason, on a server that lacks a feature; ``server_features``
answers the same question inside a test or fixture (see :class:`ServerFeatures`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator

import psycopg
import pytest
import trio

from otpy import DynamicSupervisor, Ref
from otpy import start as start_actor
from otpy.pg import wal_reader
from otpy.pg.testing import PostgresServer

# tests/pg/testing runs small user projects through pytest with this fixture.  (The
# otpy plugin itself must not be named here: it comes from its entry point.)
pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    """Fail at once, saying what to do, when the plugin is not loaded (a stale install).

    The plugin comes from the installed distribution's entry point, not from
    ``pytest_plugins`` here: pytest would refuse to register it twice.
    """
    if not config.pluginmanager.has_plugin("otpy"):
        raise pytest.UsageError(
            "otpy's pytest plugin is not loaded: install otpy (pip install -e '.[dev]', "
            "which scripts/test.sh does) so that its pytest11 entry point is registered"
        )


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
def pg_server(otpy_pg_server: PostgresServer | None) -> PostgresServer | None:
    """The session's throw-away server, or ``None`` when ``$OTPY_TEST_DSN`` is used."""
    return otpy_pg_server


@pytest.fixture(scope="session")
def pg_dsn(otpy_pg_dsn: str) -> str:
    """Superuser DSN of the server the tests run against."""
    return otpy_pg_dsn


@pytest.fixture
def own_server(pg_server: PostgresServer | None) -> PostgresServer:
    """The throw-away server, for tests that stop/restart it (skipped on an external one)."""
    if pg_server is None:
        pytest.skip("needs the throw-away server (OTPY_TEST_DSN is set)")
    return pg_server


@pytest.fixture(scope="module")
def module_dsn(otpy_module_dsn: str) -> str:
    """DSN of a fresh database of the test module's own, dropped afterwards."""
    return otpy_module_dsn


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
