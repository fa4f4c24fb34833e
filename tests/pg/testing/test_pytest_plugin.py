"""The pytest plugin as a user meets it: a test file of theirs, run by pytest.

Each test writes a small user project with ``pytester`` and runs pytest on
it in this process.  The plugin comes from the installed distribution's
``pytest11`` entry point (the user's files never mention it); the inner runs
use this session's server through ``$OTPY_TEST_DSN``, which the plugin
honours, so that they cost no extra server start.
"""

from __future__ import annotations

import textwrap

import psycopg
import pytest


@pytest.fixture
def user_project(pytester: pytest.Pytester, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTPY_TEST_DSN", pg_dsn)


def databases(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


USERS_SCHEMA = """
    import pytest

    @pytest.fixture(scope="session")
    def otpy_schema():
        return ["CREATE TABLE users (id int PRIMARY KEY, name text)",
                "INSERT INTO users VALUES (0, 'root')"]
"""

TWO_TESTS_WRITING_THE_SAME_ROW = """
    import psycopg

    def add_ada(dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO users VALUES (1, 'ada')")
            return conn.execute("SELECT name FROM users ORDER BY id").fetchall()

    def test_one(otpy_dsn):
        assert add_ada(otpy_dsn) == [("root",), ("ada",)]

    def test_two(otpy_dsn):
        assert add_ada(otpy_dsn) == [("root",), ("ada",)]

    def test_module_database_has_the_schema_too(otpy_module_dsn):
        assert add_ada(otpy_module_dsn) == [("root",), ("ada",)]
"""


@pytest.mark.usefixtures("user_project")
def test_every_test_gets_a_fresh_copy_of_the_user_s_schema(
    pytester: pytest.Pytester, pg_dsn: str
) -> None:
    pytester.makeconftest(USERS_SCHEMA)
    pytester.makepyfile(test_users=TWO_TESTS_WRITING_THE_SAME_ROW)
    before = databases(pg_dsn)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    # Every database the run made (template, copies) is gone again.
    assert databases(pg_dsn) == before


@pytest.mark.usefixtures("user_project")
def test_a_schema_function_builds_the_template_once_per_session(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import psycopg, pytest

        calls = []

        def migrate(dsn):
            calls.append(dsn)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE migrated (x int)")
                # a session left open, as a migration tool might: the template closes it

        @pytest.fixture(scope="session")
        def otpy_schema():
            return migrate
    """)  # fmt: skip
    pytester.makepyfile(
        test_migrated="""
        import psycopg, pytest
        from conftest import calls

        @pytest.mark.parametrize("n", range(3))
        def test_table_is_there(otpy_dsn, n):
            with psycopg.connect(otpy_dsn) as conn:
                assert conn.execute("SELECT count(*) FROM migrated").fetchone() == (0,)
            assert len(calls) == 1
    """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


@pytest.mark.usefixtures("user_project")
def test_a_failing_schema_fails_the_tests_that_need_it_and_says_why(
    pytester: pytest.Pytester, pg_dsn: str
) -> None:
    pytester.makeconftest("""
        import pytest

        @pytest.fixture(scope="session")
        def otpy_schema():
            return ["CREATE TABLE oops (id int PRIMARY KEY", "SELECT 1"]
    """)  # fmt: skip
    pytester.makepyfile(test_oops="def test_x(otpy_dsn):\n    pass\n")
    before = databases(pg_dsn)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*SyntaxError*"])
    assert databases(pg_dsn) == before


HANDLER_TEST = """
    import pytest
    from otpy.pg import pool, wal_reader
    from otpy.pytest_plugin import TEST_DATABASE, TEST_POOL
    from otpy.pg.testing import wait_caught_up

    class Names(wal_reader.ReplicationHandler):
        def __init__(self):
            self.names = []

        async def handle_replication_data(self, ref, changes):
            self.names += [c.data["name"] for c in changes if c.op == "insert"]

    @pytest.mark.trio
    async def test_the_handler_sees_new_users(otpy_app):
        handler = Names()
        sub = await wal_reader.subscribe(handler, TEST_DATABASE, "names", ["users_pub"])
        for name in ("ada", "grace"):
            await pool.query(TEST_POOL, "INSERT INTO users (id, name) VALUES (%s, %s)",
                             (len(name), name))
        await wait_caught_up(sub)
        assert handler.names == ["ada", "grace"]
"""


@pytest.mark.usefixtures("user_project")
def test_a_user_s_replication_handler_test_runs_against_the_running_connector(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        USERS_SCHEMA.replace(
            "\"INSERT INTO users VALUES (0, 'root')\"",
            '"CREATE PUBLICATION users_pub FOR TABLE users"',
        )
    )
    pytester.makepyfile(test_handler=textwrap.dedent(HANDLER_TEST))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_plugin_is_loaded_from_its_entry_point(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("otpy")
    assert plugin is not None and plugin.__name__ == "otpy.pytest_plugin"
