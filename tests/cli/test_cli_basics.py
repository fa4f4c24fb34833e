"""The ``otpy`` command line: demo, run, exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from otpy import __version__
from otpy.cli import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    main,
)

REPO = Path(__file__).resolve().parents[2]


def test_demo_on_a_throw_away_server_loses_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seconds", "3", "--seed", "7"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "starting a throw-away PostgreSQL" in out
    assert "insert   otpy_demo.orders" in out  # live decoded changes
    assert "pool    demo_pool: size" in out  # pool statistics
    summary = [line for line in out.splitlines() if line.startswith("demo: committed")]
    assert len(summary) == 1 and summary[0].endswith(": 0 lost")
    committed = int(summary[0].split()[2])
    assert committed > 0
    assert "stopping and removing the server" in out


def test_demo_against_an_existing_server(
    module_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--dsn", module_dsn, "--seconds", "1.5", "--seed", "3"]) == EXIT_OK
    assert ": 0 lost" in capsys.readouterr().out


def test_demo_unreachable_server_exits_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    dsn = "host=127.0.0.1 port=1 user=x password=hunter2 connect_timeout=2"
    assert main(["demo", "--dsn", dsn]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert "cannot use the server" in err and "hunter2" not in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE
    out = capsys.readouterr().out
    for command in ("demo", "run", "tail", "slots"):
        assert command in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_run_unknown_app(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "no_such_module_xyz:app"]) == EXIT_NOT_FOUND
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err
    assert main(["run", "not-a-target"]) == EXIT_NOT_FOUND
    assert "expected MODULE:APP" in capsys.readouterr().err


def test_run_bad_config_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cli_app_mod.py").write_text(
        "import otpy\napp = otpy.Application('cliapp', start=lambda env: otpy.Supervisor([]))\n"
    )
    config = tmp_path / "bad.toml"
    config.write_text('[pools.main]\ndatabase = "nope"\nsize = 2\n')
    sys.path.insert(0, str(tmp_path))
    try:
        assert main(["run", "cli_app_mod:app", "--config", str(config)]) == EXIT_CONFIG
    finally:
        sys.path.remove(str(tmp_path))
    assert "pools.main.database" in capsys.readouterr().err


_APP_MODULE = """
import otpy
from otpy.pg import pool

class Ready(otpy.GenServer):
    async def init(self):
        greeting = otpy.get_env("myapp", "greeting")
        rows = (await pool.query("main_pool", "SELECT %s::text", (greeting,))).rows
        print("READY", rows[0][0], flush=True)

app = otpy.Application("myapp", start=lambda env: Ready(), env={"greeting": "default"})
"""


def test_run_starts_connector_and_app_and_stops_on_sigterm(tmp_path: Path, module_dsn: str) -> None:
    params = conninfo_to_dict(module_dsn)
    (tmp_path / "myapp_mod.py").write_text(textwrap.dedent(_APP_MODULE))
    config = tmp_path / "app.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [databases.main_db]
            host = "{params["host"]}"
            port = {params["port"]}
            database = "{params["dbname"]}"
            username = "{params["user"]}"

            [pools.main_pool]
            database = "main_db"
            size = 1

            [env.myapp]
            greeting = "hello from toml"
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "otpy.cli", "run", "myapp_mod:app", "--config", str(config)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the app is up (or the process died)
        assert line.strip() == "READY hello from toml", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == EXIT_OK
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_stops_cleanly_on_ctrl_c(module_dsn: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "otpy.cli", "demo", "--dsn", module_dsn, "--forever"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        changes = 0
        for line in proc.stdout:  # wait until changes flow, then interrupt
            changes += line.lstrip().startswith("change")
            if changes >= 3:
                break
        assert changes >= 3, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == EXIT_INTERRUPTED, err  # 130, as `otpy run` and `otpy tail`
        assert "demo: stopping (SIGINT)" in out
        assert out.rstrip().endswith(": 0 lost")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
