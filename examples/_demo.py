"""What the PostgreSQL examples share: a database to run against, and a config for it.

This is scaffolding, not part of what an example shows: a real application
reads its connector configuration from a TOML file (``otpy run --config``)
and has a server to talk to.  Here every example takes ``--dsn DSN`` for an
existing server and, without it, starts a throw-away PostgreSQL with
:class:`otpy.testing.PostgresServer` (``wal_level=logical``, removed on exit), so
the examples run on a fresh machine with nothing but the PostgreSQL binaries.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from otpy.testing import PostgresServer

__all__ = ["connector_config", "database", "database_settings", "parser", "setup_logging"]


def parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser with the ``--dsn`` option every PostgreSQL example takes."""
    args = argparse.ArgumentParser(
        description=(description or "").split("\n\n")[0],
        epilog="Without --dsn a throw-away PostgreSQL is started and removed afterwards.",
    )
    args.add_argument(
        "--dsn",
        help="libpq connection string of a scratch database (superuser or a role allowed "
        "to create tables, publications and replication slots; wal_level=logical)",
    )
    return args


@contextlib.contextmanager
def database(dsn: str | None) -> Iterator[str]:
    """Yield ``dsn``, or the DSN of a throw-away server that lives for the block."""
    if dsn is not None:
        yield dsn
        return
    print("starting a throw-away PostgreSQL (use --dsn to run against your own) ...", flush=True)
    with PostgresServer() as server:
        yield server.dsn


def database_settings(dsn: str) -> dict[str, Any]:
    """The connector's ``databases`` entry (epg_connector's ``DbOpts``) for a libpq DSN."""
    params = conninfo_to_dict(dsn)
    settings: dict[str, Any] = {
        "host": params.get("host") or "localhost",
        "port": int(params.get("port") or 5432),
        "database": params.get("dbname") or "postgres",
        "username": params.get("user") or "postgres",
    }
    if params.get("password"):
        settings["password"] = params["password"]
    if params.get("sslmode"):
        settings["sslmode"] = params["sslmode"]
    return settings


def connector_config(dsn: str, pools: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A connector configuration with one database, ``main_db`` at ``dsn``, and ``pools``.

    The same data as a TOML file with ``[databases] main_db = "<dsn>"`` and
    ``[pools.*]`` tables (a database may be a table of settings or a DSN).
    """
    return {"databases": {"main_db": dsn}, "pools": dict(pools)}


def setup_logging(example_logger: str) -> None:
    """Show the example's own log lines (INFO) and only warnings from otpy itself."""
    logging.basicConfig(format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger(example_logger).setLevel(logging.INFO)
