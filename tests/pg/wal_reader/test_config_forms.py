"""db_opts and options in every accepted form; the readers supervisor inside an Application."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict
from wr_helpers import Recorder, execute, published_table, unique

from otpy import Application, Backoff, count_children, start_application
from otpy.pg import wal_reader
from otpy.pg.config import DatabaseConfig
from otpy.pg.errors import ConfigError, ConnectError
from otpy.pg.wal_reader import InvalidOptions, ReaderOptions


def test_options_mapping_form_and_validation() -> None:
    opts = ReaderOptions.coerce(
        {"slot_type": "persistent", "restart_backoff": {"initial": 1, "maximum": 5}}
    )
    assert opts.slot_type == "persistent" and not opts.temporary
    assert opts.restart_backoff == Backoff(initial=1, maximum=5)
    assert ReaderOptions.coerce(None) == ReaderOptions()
    assert ReaderOptions(streaming=True).plugin_options() == [
        ("proto_version", "2"),
        ("streaming", "on"),
    ]
    for bad in (
        {"max_batch_size": 0},
        {"proto_version": 5},
        {"status_interval": 0},
        {"queue_size": 0},
        {"create_publication": "yes"},
        {"restart_backoff": {"initial": 5, "maximum": 1}},
    ):
        with pytest.raises(InvalidOptions):
            ReaderOptions.coerce(bad)
    with pytest.raises(InvalidOptions, match="did you mean 'standby'"):
        ReaderOptions.coerce({"stanby": True})


def test_db_opts_forms() -> None:
    config = DatabaseConfig(name="main", database="app", username="u", host="h", port=5433)
    kwargs, described = wal_reader.resolve_database(config)
    assert kwargs["dbname"] == "app" and described == "u@h:5433/app"
    # epg_connector's DbOpts map, including its replication key (ignored).
    kwargs, described = wal_reader.resolve_database(
        {
            "host": "h",
            "port": 5433,
            "database": "app",
            "username": "u",
            "password": "secret",
            "replication": "database",
        }
    )
    assert kwargs["password"] == "secret" and "secret" not in described
    kwargs, _ = wal_reader.resolve_database("host=h port=5433 dbname=app user=u")
    assert kwargs == {"host": "h", "port": "5433", "dbname": "app", "user": "u"}
    with pytest.raises(ConfigError, match="unknown database 'nope'"):
        wal_reader.resolve_database("nope")
    with pytest.raises(ConfigError, match="unknown key"):
        wal_reader.resolve_database({"database": "app", "username": "u", "hots": "h"})


@pytest.fixture(scope="module")
def cf_pub(module_dsn: str) -> str:
    return published_table(module_dsn, "cf", "id int PRIMARY KEY")


async def test_subscribe_a_configured_database_under_an_application(
    module_dsn: str, cf_pub: str
) -> None:
    params = conninfo_to_dict(module_dsn)
    database = DatabaseConfig(
        name="main",
        database=str(params["dbname"]),
        username=str(params["user"]),
        host=str(params.get("host", "localhost")),
        port=int(params.get("port", 5432)),
    )
    app = Application(
        name=wal_reader.CONNECTOR_APP,
        start=lambda env: wal_reader.readers_supervisor_spec(),
        env={"databases": {"main": database}},
    )
    rec = Recorder()
    async with start_application(app):
        ref = await wal_reader.subscribe(rec, "main", unique("cfg"), [cf_pub], {"messages": True})
        try:
            await execute(
                module_dsn,
                "INSERT INTO cf VALUES (1)",
                "SELECT pg_logical_emit_message(false, 'audit', 'outside any transaction')",
            )
            changes = await rec.wait_changes(2)
        finally:
            await wal_reader.unsubscribe(ref)
    assert (changes[0].table, changes[0].op, changes[0].data) == ("cf", "insert", {"id": 1})
    message = changes[1]
    assert (message.table, message.op, message.data) == (
        "audit",
        "message",
        b"outside any transaction",
    )
    assert message.detail == {"transactional": False} and message.xid is None
    assert rec.batches[1].final and len(rec.batches[1]) == 1


async def test_application_shutdown_ends_the_stream_with_the_stop_callback(
    module_dsn: str, cf_pub: str
) -> None:
    app = Application(
        name=wal_reader.CONNECTOR_APP, start=lambda env: wal_reader.readers_supervisor_spec()
    )
    slot = unique("shutdown")
    for round_ in range(2):
        rec = Recorder()
        async with start_application(app):
            # The second round reuses the slot name: the first subscription died
            # with its supervisor, so it is not "already subscribed".
            await wal_reader.subscribe(rec, module_dsn, slot, [cf_pub])
            await execute(module_dsn, f"INSERT INTO cf VALUES ({100 + round_})")
            assert (await rec.wait_changes(1))[0].data == {"id": 100 + round_}
        assert rec.stops == [slot]


async def test_first_start_errors_reach_the_caller_and_leave_nothing_behind(
    module_dsn: str, cf_pub: str
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = Application(
        name=wal_reader.CONNECTOR_APP, start=lambda env: wal_reader.readers_supervisor_spec()
    )
    async with start_application(app):
        with pytest.raises(ConnectError):
            await wal_reader.subscribe(
                Recorder(), f"host=127.0.0.1 port={port} dbname=x user=x", "nobody", [cf_pub]
            )
        counts = await count_children(wal_reader.READERS_SUPERVISOR)
        assert counts.specs == 0
        # The failed attempt did not reserve the slot name.
        ref = await wal_reader.subscribe(Recorder(), module_dsn, "nobody", [cf_pub])
        await wal_reader.unsubscribe(ref)
