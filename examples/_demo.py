"""What the examples share: a database to run against, a config for it, an application.

This is scaffolding, not part of what an example shows.  Each example runs two
ways:

* ``otpy run EXAMPLE:app --config examples.toml`` from this directory, as a
  real application runs: the connector's configuration comes from the TOML
  file (here every connection setting is left to libpq: ``PGHOST``,
  ``PGDATABASE``...), and :func:`application` makes the example an
  :class:`otpy.Application` that does its work once, then stops;
* ``python EXAMPLE.py [--dsn DSN]``: without ``--dsn`` a throw-away PostgreSQL
  is started with :class:`otpy.pg.testing.PostgresServer` (``wal_level=logical``,
  removed on exit), so the examples run on a fresh machine with nothing but
  the PostgreSQL binaries.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from psycopg.conninfo import conninfo_to_dict

import otpy
from otpy.pg.testing import PostgresServer

__all__ = [
    "application",
    "connector_config",
    "database",
    "database_settings",
    "parser",
    "setup_logging",
]


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


def application(
    name: str,
    work: Callable[[Mapping[str, Any]], Awaitable[object]],
    *children: otpy.ChildSpec,
    env: Mapping[str, Any] | None = None,
) -> otpy.Application:
    """The example as an application for ``otpy run``: ``children``, then ``work(env)`` once.

    The root supervisor starts the example's own servers (``children``), then
    a task that awaits ``work(env)`` (``env`` is the application's
    environment: ``env`` here, overridden by ``[env.NAME]`` in the TOML file).
    When the work is done the task stops the whole system, as Erlang's
    ``init:stop()`` does, so ``otpy run`` exits 0.  If the work fails, the
    supervisor (intensity 0) gives up at once and ``otpy run`` exits 1, rather
    than doing the work again.  The example's own log lines (logger ``name``)
    show at INFO whatever ``--log-level`` says for the rest.
    """

    async def once(app_env: Mapping[str, Any]) -> None:
        await work(app_env)
        system = otpy.current_system()
        if system is not None:
            system.stop(f"{name} finished")

    def start(app_env: Mapping[str, Any]) -> otpy.Supervisor:
        logging.getLogger(name).setLevel(logging.INFO)
        task = otpy.TaskServer.child_spec(once, app_env, id="work", restart="transient")
        return otpy.Supervisor([*children, task], intensity=0)

    return otpy.Application(name, start=start, env=env or {})
