"""The ``otpy`` command line (the demo grows with the connector)."""

from __future__ import annotations

import pytest

from otpy import __version__
from otpy.cli import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, main


def test_demo_starts_and_removes_a_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "wal_level=logical" in out and "slot creation works" in out


def test_demo_against_an_existing_server(pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--dsn", pg_dsn]) == EXIT_OK
    assert "slot creation works" in capsys.readouterr().out


def test_demo_unreachable_server_exits_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["demo", "--dsn", "host=127.0.0.1 port=1 user=x password=hunter2 connect_timeout=2"]
    )
    assert code == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert "cannot use the server" in err and "hunter2" not in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE
    assert "demo" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out
