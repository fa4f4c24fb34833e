"""The connector application: configuration in, pools and WAL readers out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from psycopg.conninfo import conninfo_to_dict

import otpy
from otpy.pg import pool, wal_reader
from otpy.pg.app import APP_NAME, connector_application, load_config
from otpy.pg.errors import ConfigError
from otpy.pg.wal_reader import Change, ChangeBatch, ReplicationHandler


def config_mapping(dsn: str) -> dict[str, Any]:
    params = conninfo_to_dict(dsn)
    return {
        "databases": {
            "main_db": {
                "host": params["host"],
                "port": int(params["port"]),
                "database": params["dbname"],
                "username": params["user"],
            }
        },
        "pools": {
            "main_pool": {"database": "main_db", "size": 2},
            "spare_pool": {"database": "main_db", "size": [1, 3]},
        },
    }


class Collect(ReplicationHandler):
    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.arrived = trio.Event()

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        self.changes.extend(changes)
        self.arrived.set()

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        pass


async def test_pools_and_readers_run_under_the_connector(module_dsn: str) -> None:
    app = connector_application(config_mapping(module_dsn))
    async with otpy.start_application(app) as system:
        result = await pool.query("main_pool", "SELECT 40 + %s AS answer", (2,))
        assert result.rows == [(42,)]
        assert (await pool.query("spare_pool", "SELECT 1")).rows == [(1,)]
        async with pool.connection("main_pool") as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS app_items (id int PRIMARY KEY)")
            await conn.execute("DROP PUBLICATION IF EXISTS app_pub")
            await conn.execute("CREATE PUBLICATION app_pub FOR TABLE app_items")

        # A configured database name is enough for a WAL reader.
        handler = Collect()
        sub = await wal_reader.subscribe(handler, "main_db", "app_slot", ["app_pub"])
        await pool.query("main_pool", "INSERT INTO app_items VALUES (7)")
        with trio.fail_after(15):
            await handler.arrived.wait()
        assert [(c.table, c.op, c.data) for c in handler.changes] == [
            ("app_items", "insert", {"id": 7})
        ]

        root = system.root(APP_NAME)
        ids = [child.id for child in await otpy.which_children(root)]
        assert ids == [
            pool.pool_key("main_pool"),
            pool.pool_key("spare_pool"),
            wal_reader.READERS_SUPERVISOR,
        ]
        assert sub.reader() is not None
    # Stopping the application stopped the pools and the reader.
    with pytest.raises(pool.PoolNotFound):
        await pool.query("main_pool", "SELECT 1")


async def test_user_application_starts_after_the_connector(
    module_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Any] = []

    class UsesPool(otpy.GenServer):
        async def init(self) -> None:
            # The connector started first, so its pools are there during our init.
            seen.append((await pool.query("main_pool", "SELECT 'ready'")).rows)

    connector = connector_application(config_mapping(module_dsn))
    app = otpy.Application("myapp", start=lambda env: UsesPool(), dependencies=[connector])
    caplog.set_level(logging.INFO, logger="otpy.application")
    async with otpy.start_application(app):
        assert seen == [[("ready",)]]
    started = [
        r.application for r in caplog.records if getattr(r, "event", "") == "application_started"
    ]
    stopped = [
        r.application for r in caplog.records if getattr(r, "event", "") == "application_stopped"
    ]
    assert started == [APP_NAME, "myapp"]
    assert stopped == ["myapp", APP_NAME]


def test_config_from_toml_file(tmp_path: Path, module_dsn: str) -> None:
    params = conninfo_to_dict(module_dsn)
    path = tmp_path / "app.toml"
    path.write_text(
        f"""
[databases.main_db]
host = "{params["host"]}"
port = {params["port"]}
database = "{params["dbname"]}"
username = "{params["user"]}"

[pools.main_pool]
database = "main_db"
size = [1, 4]
"""
    )
    config = load_config(path)
    assert config.pools["main_pool"].size == (1, 4)
    app = connector_application(str(path))
    assert app.env["config"] == config


def test_bad_config_fails_at_once_naming_the_key() -> None:
    bad = {"databases": {"main_db": {"database": "x", "username": "u"}}}
    bad["pools"] = {"main_pool": {"database": "maindb", "size": 2}}  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=r"pools\.main_pool\.database.*'maindb'"):
        connector_application(bad)


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        connector_application(tmp_path / "nope.toml")


def test_no_config_means_readers_only() -> None:
    app = connector_application()
    assert load_config(None).pools == {}
    assert app.name == APP_NAME


async def test_the_connector_takes_absent_settings_from_a_service_file(
    tmp_path: Path, module_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = conninfo_to_dict(module_dsn)
    services = tmp_path / "pg_service.conf"
    services.write_text(
        f"[shop]\nhost={params['host']}\nport={params['port']}\nuser={params['user']}\n"
        f"dbname={params['dbname']}\n",
        encoding="utf-8",
    )
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    path = tmp_path / "app.toml"
    path.write_text(
        '[databases]\nmain_db = "service=shop"\n\n[pools.main_pool]\n'
        'database = "main_db"\nsize = 1\n',
        encoding="utf-8",
    )
    async with otpy.start_application(connector_application(path)):
        result = await pool.query("main_pool", "SELECT current_database()")
        assert result.scalar() == params["dbname"]


def test_a_missing_certificate_fails_the_application_at_once(tmp_path: Path) -> None:
    missing = tmp_path / "root.crt"
    bad = {"databases": {"main_db": {"host": "h", "sslrootcert": str(missing)}}}
    with pytest.raises(ConfigError, match=r"databases\.main_db\.sslrootcert: file .*root\.crt"):
        connector_application(bad)
