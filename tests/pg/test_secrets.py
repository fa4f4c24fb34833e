"""No password in an error, a repr, a traceback or a log record, on any path that takes a DSN.

psycopg and libpq quote a malformed DSN whole in their messages, and a
traceback prints the chained psycopg error too: each entry point is driven
with such DSNs (and with valid ones that fail to connect) and everything a
user could see is searched for the password.
"""

from __future__ import annotations

import logging
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from otpy import Ref
from otpy._util import raise_unwrapped
from otpy.pg import pool, wal_reader
from otpy.pg.config import ConnectorConfig, DatabaseConfig, PoolConfig, Secret, redact
from otpy.pg.connection import TrioConnection
from otpy.pg.copy_both import replication_connect
from otpy.pg.errors import ConfigError

SECRET = "s3cr3t-Pa55"

#: DSNs libpq or psycopg refuse, quoting (part of) them in the message.
MALFORMED = [
    f"postgresql://u:{SECRET}@[host:5432/db",
    f"host=x password={SECRET} port=notanumber",
    f"password='{SECRET}",
    f"host=x password={SECRET} = =",
    f"postgresql://u@h/db?password={SECRET}&bogus=1",
    f"host=x password='{SECRET} with spaces' hots=1",
    f"postgresql://u:{SECRET}@h:notaport/db",
]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exposed(exc: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    """Everything a user may see of ``exc`` and of the log records captured."""
    formatter = logging.Formatter("%(message)s")
    records = [formatter.format(record) for record in caplog.records]
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc), *records, caplog.text])


def chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception chained to it, shown in tracebacks or not."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__]
    return seen


def assert_hidden(exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    # Even a suppressed context (``raise ... from None``) is kept on the
    # exception, where error trackers and debuggers can still show it.
    text = exposed(exc, caplog) + "".join(f"{e!s} {e!r}" for e in chain(exc))
    assert SECRET not in text
    assert SECRET.replace("-", "%2D") not in text


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.DEBUG):
        yield


def test_redact_removes_passwords_from_keyword_and_uri_forms() -> None:
    assert redact(f"a password={SECRET} b") == "a password=******** b"
    assert redact(f"x 'postgresql://u:{SECRET}@h/d' y") == "x 'postgresql://u:********@h/d' y"
    assert redact(f"uri ?sslpassword={SECRET}&a=1") == "uri ?sslpassword=********&a=1"
    # A value found in a source is removed wherever it appears in the text.
    assert redact(f'bad value "{SECRET}"', {"password": SECRET}) == 'bad value "********"'
    assert redact(f"({SECRET})", Secret(SECRET)) == "(********)"
    assert redact(f"got {SECRET} x", f"password='{SECRET}") == "got ******** x"


def test_redact_removes_a_short_secret_only_as_a_whole_word() -> None:
    assert redact("pw is wrong, pwd and upwards stay", Secret("pw")) == (
        "******** is wrong, pwd and upwards stay"
    )


def test_the_command_line_redacts_with_the_same_function_and_its_own_marker() -> None:
    from otpy.cli.errors import redact as cli_redact
    from otpy.cli.errors import secrets_of

    text = f"bad dsn 'host=h password={SECRET}' and {SECRET} again"
    assert cli_redact(text, secrets_of(f"password={SECRET}")) == (
        redact(text, f"password={SECRET}", marker="***")
    )
    # A password in a DSN form is removed even when it was not named as a secret.
    assert SECRET not in cli_redact(f"bad dsn 'host=h password={SECRET}'", [])


@pytest.mark.parametrize("dsn", MALFORMED)
def test_from_dsn_never_shows_the_password(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError) as info:
        DatabaseConfig.from_dsn("d", dsn)
    assert info.value.path.startswith("databases.d")
    assert_hidden(info.value, caplog)


@pytest.mark.parametrize("dsn", MALFORMED)
def test_from_mapping_and_toml_never_show_the_password(
    dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError) as info:
        ConnectorConfig.from_mapping({"databases": {"d": dsn}})
    assert_hidden(info.value, caplog)
    path = tmp_path / "c.toml"
    escaped = dsn.replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(f'[databases]\nd = "{escaped}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info2:
        ConnectorConfig.from_toml(path)
    assert_hidden(info2.value, caplog)


@pytest.mark.parametrize("dsn", MALFORMED)
def test_resolve_database_never_shows_the_password(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError) as info:
        wal_reader.resolve_database(dsn)
    assert info.value.path.startswith("db_opts")
    assert_hidden(info.value, caplog)


@pytest.mark.parametrize("dsn", MALFORMED)
async def test_connect_never_shows_the_password(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(psycopg.Error) as info:
        await TrioConnection.connect(dsn, connect_timeout=2)
    assert_hidden(info.value, caplog)
    with pytest.raises(psycopg.Error) as info2:
        await replication_connect(dsn, connect_timeout=2)
    assert_hidden(info2.value, caplog)


async def test_connect_keywords_never_show_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A keyword libpq rejects, and a failing connection: the password is in kwargs.
    with pytest.raises(psycopg.Error) as info:
        await TrioConnection.connect(host="127.0.0.1", password=SECRET, hots="x")
    assert_hidden(info.value, caplog)
    with pytest.raises(psycopg.Error) as info2:
        await TrioConnection.connect(
            f"host=127.0.0.1 port={_closed_port()} user=u dbname=d", password=SECRET
        )
    assert_hidden(info2.value, caplog)


async def test_open_pool_never_shows_the_password(caplog: pytest.LogCaptureFixture) -> None:
    db = DatabaseConfig(
        name="db",
        host="127.0.0.1",
        port=_closed_port(),
        database="d",
        username="u",
        password=Secret(SECRET),
        params={"sslpassword": SECRET},
    )
    config = PoolConfig(name="p", database="db", min_size=1, max_size=1, checkout_timeout=2.0)
    with pytest.raises(psycopg.OperationalError) as info:
        async with pool.open_pool("p", config, db):
            pass  # pragma: no cover - the pool cannot open
    assert_hidden(info.value, caplog)
    assert SECRET not in repr(db) and SECRET not in db.describe()


class _Handler(wal_reader.ReplicationHandler):
    async def handle_replication_data(self, ref: Any, changes: Any) -> None:
        pass  # pragma: no cover - never connects

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        pass


@pytest.mark.parametrize("dsn", MALFORMED[:3])
async def test_subscribe_with_a_malformed_dsn_never_shows_the_password(
    dsn: str, readers: Ref, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError) as info:
        await wal_reader.subscribe(_Handler(), dsn, "secret_slot", ["pub"])
    assert_hidden(info.value, caplog)


async def test_subscribe_failing_to_connect_never_shows_the_password(
    readers: Ref, caplog: pytest.LogCaptureFixture, pg_dsn: str
) -> None:
    params = conninfo_to_dict(pg_dsn)
    dsn = (
        f"postgresql://{params['user']}:{SECRET}@127.0.0.1:{_closed_port()}/{params['dbname']}"
        "?connect_timeout=2"
    )
    with pytest.raises(psycopg.OperationalError) as info:
        await wal_reader.subscribe(_Handler(), dsn, "secret_slot", ["pub"])
    assert_hidden(info.value, caplog)


def test_single_exception_keeps_its_own_chain() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError("outer") from inner
    except ValueError as outer:
        error = outer
    with pytest.raises(ValueError, match="outer") as info:
        raise_unwrapped(ExceptionGroup("g", [error]))
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize("command", [["slots"], ["tail", "--publication", "pub"]])
@pytest.mark.parametrize("dsn", MALFORMED[:3])
def test_cli_output_never_shows_the_password(
    command: list[str],
    dsn: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from otpy.cli import main

    try:
        main([*command, "--dsn", dsn])
    except BaseException as exc:  # whatever escapes is searched too
        assert_hidden(exc, caplog)
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    assert SECRET not in caplog.text
