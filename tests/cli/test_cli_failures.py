"""What the ``otpy`` command does when things go wrong, run as a user runs it: a subprocess.

Every expected failure prints one line on stderr (no traceback unless ``--debug``,
never a password) and exits with its documented code; ``| head -1`` and Ctrl-C end
the long-running commands at once, with their conventional codes, releasing their slots.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from otpy.cli import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_NOPERM,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_OUTPUT_CLOSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    main,
)
from otpy.pg.testing import PostgresNotFoundError, PostgresServer

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "pw-Zx81-never-shown"
REFUSED = f"postgresql://someone:{PASSWORD}@127.0.0.1:1/db?connect_timeout=5"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def otpy(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m otpy.cli ARGS`` with stdin closed, as a script would."""
    return subprocess.run(
        [sys.executable, "-m", "otpy.cli", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env or _env(),
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line ``result`` printed on stderr (asserting it is one, with no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def dsn(module_dsn: str) -> str:
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        conn.execute("CREATE PUBLICATION items_pub FOR TABLE items")
    return module_dsn


def _slot_names(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots")}


def _drop_slots(dsn: str, *names: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = ANY(%s) AND NOT active",
            (list(names),),
        )


@pytest.fixture(scope="module")
def replica_server() -> Iterator[PostgresServer]:
    """A server with ``wal_level = replica`` where role ``alice`` must give her password."""
    try:
        server = PostgresServer(settings={"wal_level": "replica"})
        server.start()
    except PostgresNotFoundError as exc:
        pytest.skip(f"needs PostgreSQL's server binaries: {exc}")
    try:
        (server.datadir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE ROLE alice LOGIN REPLICATION PASSWORD 'the-right-one'")
            conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
            conn.execute("CREATE PUBLICATION items_pub FOR TABLE items")
            conn.execute("SELECT pg_reload_conf()")
        yield server
    finally:
        server.cleanup()


def _as(server: PostgresServer, user: str, password: str | None = None) -> str:
    params = conninfo_to_dict(server.dsn)
    params.update(user=user, **({"password": password} if password else {}))
    return make_conninfo(**params)  # type: ignore[arg-type]


# -- the server ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["slots", "tail", "demo"])
def test_an_unreachable_server_is_one_line_and_exit_69(command: str) -> None:
    extra = ["--publication", "items_pub"] if command == "tail" else []
    result = otpy(command, "--dsn", REFUSED, *extra)
    assert result.returncode == EXIT_UNAVAILABLE
    line = one_line(result)
    assert line.startswith(f"otpy {command}: cannot use the server")
    assert "127.0.0.1" in line and "port=1" in line


@pytest.mark.parametrize("command", ["slots", "tail"])
def test_a_wrong_password_exits_77_and_is_never_printed(
    replica_server: PostgresServer, command: str
) -> None:
    extra = ["--publication", "items_pub"] if command == "tail" else []
    in_dsn = otpy(command, "--dsn", _as(replica_server, "alice", PASSWORD), *extra)
    assert in_dsn.returncode == EXIT_NOPERM
    assert "password authentication failed" in one_line(in_dsn)
    in_env = otpy(
        command, "--dsn", _as(replica_server, "alice"), *extra, env=_env(PGPASSWORD=PASSWORD)
    )
    assert in_env.returncode == EXIT_NOPERM
    assert "check the user name and the password" in one_line(in_env)


@pytest.mark.parametrize("command", ["slots", "tail"])
def test_a_wrong_password_stays_hidden_even_with_debug(
    replica_server: PostgresServer, command: str
) -> None:
    extra = ["--publication", "items_pub"] if command == "tail" else []
    result = otpy(command, "--debug", "--dsn", _as(replica_server, "alice", PASSWORD), *extra)
    assert result.returncode == EXIT_NOPERM
    assert "Traceback" in result.stderr  # --debug shows it, after the subcommand too
    assert PASSWORD not in result.stderr + result.stdout


@pytest.mark.parametrize("command", ["tail", "demo"])
def test_wal_level_not_logical_names_the_setting_and_exits_78(
    replica_server: PostgresServer, command: str
) -> None:
    extra = ["--publication", "items_pub"] if command == "tail" else ["--seconds", "1"]
    result = otpy(command, "--dsn", replica_server.dsn, *extra)
    assert result.returncode == EXIT_CONFIG
    line = one_line(result)
    assert "wal_level = logical" in line and "postgresql.conf" in line and "restart" in line


# -- names that do not fit -----------------------------------------------------------------


def test_a_missing_publication_is_one_line_and_exit_66(dsn: str) -> None:
    result = otpy("tail", "--dsn", dsn, "--publication", "no_such_pub")
    assert result.returncode == EXIT_NOT_FOUND
    assert "'no_such_pub' do not exist" in one_line(result)


def test_a_slot_read_by_another_session_exits_69(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_create_logical_replication_slot('fail_busy', 'pgoutput', true)")
        result = otpy("tail", "--dsn", dsn, "--publication", "items_pub", "--slot", "fail_busy")
        pid = holder.info.backend_pid
    assert result.returncode == EXIT_UNAVAILABLE
    assert f"active for PostgreSQL backend PID {pid}" in one_line(result)


def test_a_slot_of_the_wrong_kind_exits_78(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('fail_kept', 'pgoutput')")
    try:
        result = otpy("tail", "--dsn", dsn, "--publication", "items_pub", "--slot", "fail_kept")
        assert result.returncode == EXIT_CONFIG
        assert "a persistent replication slot 'fail_kept' exists" in one_line(result)
    finally:
        _drop_slots(dsn, "fail_kept")


def test_dropping_a_missing_slot_exits_66(dsn: str) -> None:
    result = otpy("slots", "--dsn", dsn, "--drop", "no_such_slot", "--yes")
    assert result.returncode == EXIT_NOT_FOUND
    assert "no replication slot named 'no_such_slot'" in one_line(result)


def test_the_drop_question_with_stdin_closed_keeps_the_slot_and_exits_66(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('fail_ask', 'pgoutput')")
    try:
        result = otpy("slots", "--dsn", dsn, "--drop", "fail_ask")
        assert result.returncode == EXIT_NOT_FOUND
        assert "pass --yes" in one_line(result)
        assert "fail_ask" in _slot_names(dsn)
    finally:
        _drop_slots(dsn, "fail_ask")


# -- the command line itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--log-level", "loud", "slots", "--dsn", "host=x"],
        ["slots", "--log-level", "loud", "--dsn", "host=x"],
        ["tail", "--dsn", "host=x", "--publication", "p", "--limit", "-1"],
        ["tail", "--dsn", "host=x", "--publication", "p", "--seconds", "nan"],
        ["demo", "--seconds", "-3"],
        ["slots", "--dsn", f"postgresql://u:{PASSWORD}@[host:5432/db"],
        ["slots", "--dsn", f"host=x password={PASSWORD} port"],
        ["tail", "--dsn", "host=x"],
    ],
)
def test_invalid_arguments_are_one_line_and_exit_2(args: list[str]) -> None:
    result = otpy(*args)
    assert result.returncode == EXIT_USAGE
    line = one_line(result)
    assert ": error: " in line and "--help" in line


def test_common_options_work_after_the_subcommand(dsn: str) -> None:
    result = otpy("slots", "--log-level", "debug", "--dsn", dsn)
    assert result.returncode == EXIT_OK, result.stderr
    assert "DEBUG otpy.pg.connection" in result.stderr
    before = otpy("--log-level", "info", "slots", "--dsn", REFUSED, "--debug")
    assert before.returncode == EXIT_UNAVAILABLE and "Traceback" in before.stderr


def test_log_level_names_are_checked_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["slots", "--dsn", "host=x", "--log-level", "verbose"])
    assert info.value.code == EXIT_USAGE
    assert "invalid level 'verbose'" in capsys.readouterr().err


_NEEDS_A_POOL = """
import otpy
from otpy.pg import pool

class Ready(otpy.GenServer):
    async def init(self):
        await pool.query("main_pool", "SELECT 1")
        print("READY", flush=True)

app = otpy.Application("needs_pool", start=lambda env: Ready())
"""


def test_run_without_the_config_its_app_needs_exits_78(tmp_path: Path) -> None:
    (tmp_path / "needs_pool_mod.py").write_text(textwrap.dedent(_NEEDS_A_POOL))
    result = otpy("run", "needs_pool_mod:app", cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG
    line = one_line(result)
    assert "application 'needs_pool' failed to start" in line
    assert "'main_pool'" in line and "--config" in line


# -- long-running commands: how they end ---------------------------------------------------


class Command:
    """A running ``otpy`` subprocess whose stderr lines can be awaited with a deadline."""

    def __init__(self, *args: str, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "otpy.cli", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        self._err: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.put(line)
        self._err.put(None)

    def stderr_line(self, timeout: float = 30) -> str:
        """The next stderr line ("" at end of file); fails after ``timeout`` seconds."""
        try:
            return self._err.get(timeout=timeout) or ""
        except queue.Empty:
            pytest.fail(f"no line on stderr within {timeout} s")

    def wait(self, timeout: float = 30) -> tuple[int, str]:
        """The exit code and the rest of stderr; fails if it does not exit within ``timeout``."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after {timeout} s")
        self._reader.join(timeout)
        lines = []
        while (line := self._err.get_nowait()) is not None:
            lines.append(line)
        return code, "".join(lines)

    def ready(self) -> str:
        """The slot ``otpy tail`` announces on stderr once it streams."""
        line = self.stderr_line()
        assert "otpy tail: reading" in line, line
        return line.split("slot ")[1].split("'")[1]

    def kill(self) -> None:
        """Make sure it is gone (end of a test, whatever happened)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def test_tail_into_a_reader_that_closes_exits_at_once_and_drops_its_slot(dsn: str) -> None:
    tail = Command("tail", "--dsn", dsn, "--publication", "items_pub", "--json")
    try:
        slot = tail.ready()
        assert slot in _slot_names(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (1, 'first')")  # and nothing after it
        assert tail.proc.stdout is not None
        assert json.loads(tail.proc.stdout.readline())["data"] == {"id": 1, "name": "first"}
        tail.proc.stdout.close()  # `| head -1`: the reader goes away after one line
        code, rest = tail.wait()
        assert code == EXIT_OUTPUT_CLOSED
        assert "Traceback" not in rest and "Exception ignored" not in rest, rest
        assert slot not in _slot_names(dsn)
    finally:
        tail.kill()


def test_tail_stops_on_ctrl_c_with_130(dsn: str) -> None:
    tail = Command("tail", "--dsn", dsn, "--publication", "items_pub")
    try:
        slot = tail.ready()
        tail.proc.send_signal(signal.SIGINT)
        code, err = tail.wait()
        assert code == EXIT_INTERRUPTED, err
        assert "Traceback" not in err
        assert slot not in _slot_names(dsn)
    finally:
        tail.kill()


_WAITS = """
import otpy

class Ready(otpy.GenServer):
    async def init(self):
        print("READY", flush=True)

app = otpy.Application("waits", start=lambda env: Ready())
"""


def test_run_stops_on_ctrl_c_with_130(tmp_path: Path) -> None:
    (tmp_path / "waits_mod.py").write_text(textwrap.dedent(_WAITS))
    run = Command("run", "waits_mod:app", cwd=tmp_path)
    try:
        assert run.proc.stdout is not None
        assert run.proc.stdout.readline().strip() == "READY"
        run.proc.send_signal(signal.SIGINT)
        code, err = run.wait()
        assert code == EXIT_INTERRUPTED, err
    finally:
        run.kill()


def test_persistent_tail_keeps_one_slot_across_runs_and_says_how_to_drop_it(dsn: str) -> None:
    try:
        for _ in range(2):
            tail = Command("tail", "--dsn", dsn, "--publication", "items_pub", "--persistent")
            try:
                slot = tail.ready()
                tail.proc.send_signal(signal.SIGTERM)
                code, err = tail.wait()
                assert code == EXIT_OK, err
            finally:
                tail.kill()
            assert slot == "otpy_tail_items_pub"
            assert f"left persistent slot {slot!r}" in err and f"--drop {slot}" in err
        assert {s for s in _slot_names(dsn) if s.startswith("otpy_tail")} == {slot}
    finally:
        _drop_slots(dsn, "otpy_tail_items_pub")
