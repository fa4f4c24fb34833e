"""``otpy status``: a real metrics endpoint (a pool, a reader) read as a user reads it.

The endpoint runs in the test's trio run; the command runs in a subprocess (as
a script runs it) or in-process through ``otpy.cli.main`` in a worker thread
(it calls ``trio.run`` itself, which cannot nest in the test's run).
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

import psycopg
import pytest
import trio
from obs_helpers import wait_until
from pool_helpers import pool_config
from test_cli_failures import _env
from wr_helpers import Recorder, create_publication, execute, unique

from otpy import DynamicSupervisor
from otpy import start as start_actor
from otpy.cli import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, main
from otpy.cli.status import ReaderRow, StatusParserMissing, parse_metrics, run_status, status_url
from otpy.pg import pool, wal_reader
from otpy.pg.config import DatabaseConfig
from otpy.pg.health import serve_metrics
from otpy.pg.metrics import exposition

REPO = Path(__file__).resolve().parents[2]


async def otpy_status(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m otpy.cli status ARGS`` in a subprocess, off the trio thread."""
    run: Callable[[], subprocess.CompletedProcess[str]] = lambda: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "otpy.cli", "status", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        cwd=REPO,
    )
    return await trio.to_thread.run_sync(run)


@pytest.fixture
async def endpoint(module_dsn: str) -> AsyncIterator[str]:
    """A process with pool ``status_pool`` (2 connections) and its metrics endpoint's URL."""
    db = DatabaseConfig.from_dsn("db", module_dsn)
    async with (
        pool.open_pool("status_pool", pool_config(2), db) as p,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(serve_metrics, "127.0.0.1", 0)
        await p.query("SELECT 1")
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def test_status_json_shows_the_pool_and_readiness_in_a_subprocess(endpoint: str) -> None:
    result = await otpy_status("--url", endpoint, "--json")
    assert result.returncode == EXIT_OK, result.stderr
    snap = json.loads(result.stdout)
    assert snap["url"] == endpoint
    assert (snap["ready"], snap["problems"]) == (True, [])
    assert snap["readers"] == []
    [row] = [p for p in snap["pools"] if p["name"] == "status_pool"]
    assert row["size"] == 2
    assert row["idle"] + row["in_use"] == 2
    assert (row["waiting"], row["timeouts"]) == (0, 0)


async def test_status_prints_a_pool_table_and_the_readiness_line_in_process(
    endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await trio.to_thread.run_sync(main, ["status", "--url", endpoint + "/metrics"])
    out, err = capsys.readouterr()
    assert (code, err) == (EXIT_OK, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"otpy status of {endpoint} at ")
    header = lines.index("pools") + 1
    assert lines[header].split() == ["pool", "size", "idle", "in", "use", "waiting", "timeouts"]
    [row] = [line.split() for line in lines if line.startswith("status_pool ")]
    assert row[1] == "2"  # size
    assert row[4:] == ["0", "0"]  # waiting, timeouts
    assert "readers" in lines and "(none)" in lines
    assert lines[-1] == "ready"


async def test_status_names_what_makes_a_process_not_ready(
    capsys: pytest.CaptureFixture[str],
) -> None:
    nowhere = DatabaseConfig(
        name="nowhere", database="x", host="127.0.0.1", port=1, connect_timeout=1.0
    )
    async with (
        pool.open_pool("down_pool", pool_config(1), nowhere, wait=False) as p,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(serve_metrics, "127.0.0.1", 0)
        with trio.fail_after(10):
            await p.wait_for(lambda s: s.down)
        code = await trio.to_thread.run_sync(main, ["status", "--port", str(port)])
        nursery.cancel_scope.cancel()
    out, _ = capsys.readouterr()
    assert code == EXIT_OK
    last = out.splitlines()[-1]
    assert last.startswith("not ready: pool 'down_pool' is down"), out


async def test_status_shows_a_reader_with_its_state_and_transactions(
    module_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS status_things (id int PRIMARY KEY)")
    publication = unique("status_pub")
    create_publication(module_dsn, publication, ["status_things"])
    rec = Recorder()
    slot = unique("status")
    async with trio.open_nursery() as nursery:
        await start_actor(
            nursery,
            DynamicSupervisor(intensity=1000, period=60),
            name=wal_reader.READERS_SUPERVISOR,
        )
        sub = await wal_reader.subscribe(rec, module_dsn, slot, [publication])
        try:
            port = await nursery.start(serve_metrics, "127.0.0.1", 0)
            await execute(module_dsn, "INSERT INTO status_things VALUES (1)")
            await rec.wait_changes(1)
            await wait_until(lambda: sub.metrics().transactions == 1)
            code = await trio.to_thread.run_sync(main, ["status", "--port", str(port), "--json"])
        finally:
            await wal_reader.unsubscribe(sub)
        nursery.cancel_scope.cancel()
    out, _ = capsys.readouterr()
    assert code == EXIT_OK
    [reader] = [r for r in json.loads(out)["readers"] if r["slot"] == slot]
    assert reader["state"] == "streaming"
    assert (reader["transactions"], reader["changes"], reader["restarts"]) == (1, 1, 0)
    assert reader["last_error"] is None


def _watch(args: list[str], blocks: int, marker: str) -> tuple[list[str], int, str]:
    """Run ``otpy status --watch ...`` until ``blocks`` lines start with ``marker``; then Ctrl-C."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "otpy.cli", "status", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        while sum(line.startswith(marker) for line in lines) < blocks:
            line = proc.stdout.readline()
            assert line, f"the watch ended early: {lines}"
            lines.append(line.rstrip("\n"))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return lines, proc.returncode, err


async def test_watch_prints_a_block_per_refresh_until_ctrl_c(endpoint: str) -> None:
    with trio.fail_after(60):
        lines, code, err = await trio.to_thread.run_sync(
            _watch, ["--url", endpoint, "--watch", "0.1"], 2, "ready"
        )
    assert (code, err) == (EXIT_INTERRUPTED, "")
    assert "\x1b" not in "".join(lines)  # not a terminal: no screen clearing
    assert sum(line.startswith("otpy status of ") for line in lines) == 2
    assert sum(line.startswith("status_pool ") for line in lines) == 2
    second = [i for i, line in enumerate(lines) if line.startswith("otpy status of ")][1]
    assert lines[second - 1] == ""  # blocks apart by a blank line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_watch_on_a_terminal_redraws_the_screen(endpoint: str) -> None:
    out = _Terminal()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(run_status, endpoint, watch=0.05, as_json=False, request_timeout=5, out=out)
        )
        await wait_until(lambda: out.getvalue().count("otpy status of ") >= 2)
        nursery.cancel_scope.cancel()
    blocks = out.getvalue().split("\x1b[H\x1b[2J")
    assert blocks[0] == ""  # the screen is cleared before the first block too
    assert all(block.startswith("otpy status of ") for block in blocks[1:])


async def test_watch_keeps_going_while_the_endpoint_is_unreachable() -> None:
    port = await _free_port()
    with trio.fail_after(60):
        lines, code, err = await trio.to_thread.run_sync(
            _watch, ["--port", str(port), "--watch", "0.1", "--json"], 2, "{"
        )
    assert (code, err) == (EXIT_INTERRUPTED, "")
    for line in lines[:2]:
        assert json.loads(line)["error"].startswith("cannot reach the metrics endpoint")


async def _free_port() -> int:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port: int = listener.getsockname()[1]
    listener.close()  # a free port nobody listens on
    return port


async def test_an_unreachable_endpoint_exits_69_with_one_line_and_no_traceback() -> None:
    port = await _free_port()
    result = await otpy_status("--port", str(port))
    assert result.returncode == EXIT_UNAVAILABLE
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        f"otpy status: cannot reach the metrics endpoint http://127.0.0.1:{port}"
    )
    assert result.stdout == ""


def test_a_url_that_is_not_http_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", "ftp://127.0.0.1:9187"]) == EXIT_USAGE
    assert main(["status", "--url", "http://127.0.0.1:notaport"]) == EXIT_USAGE
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("otpy status: invalid --url") for line in lines)


def test_the_url_defaults_to_the_metrics_table_defaults_and_drops_an_endpoint_path() -> None:
    assert status_url(None, "127.0.0.1", 9187) == "http://127.0.0.1:9187"
    assert status_url("http://h:1/metrics", "x", 2) == "http://h:1"
    assert status_url("http://h:1/prefix/readyz/", "x", 2) == "http://h:1/prefix"


def test_the_parser_reads_what_the_collector_writes_and_the_tables_render() -> None:
    parse_metrics(exposition().decode())  # whatever this process holds: it parses
    text = (
        'otpy_reader_state{slot="s",state="starting"} 1.0\n'
        'otpy_reader_state{slot="s",state="streaming"} 0.0\n'
        'otpy_reader_lag_bytes{slot="s"} 2048.0\n'
        "# TYPE otpy_reader_restarts counter\n"
        'otpy_reader_restarts_total{slot="s"} 3.0\n'
        "# TYPE otpy_reader_last_error info\n"
        'otpy_reader_last_error_info{slot="s",error="boom"} 1.0\n'
    )
    readers, _ = parse_metrics(text)
    assert readers == (
        ReaderRow(slot="s", state="starting", lag_bytes=2048, restarts=3, last_error="boom"),
    )


def test_without_prometheus_client_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client.parser", None)  # import fails
    with pytest.raises(StatusParserMissing, match=r"pip install 'trio-otp-pg\[metrics\]'") as info:
        parse_metrics("")
    assert info.value.code == EXIT_CONFIG
