"""What a clean database per test costs, by way of isolation (docs/testing.md has the figures).

Run: ``.venv/bin/python tests/pg/testing/bench_isolation.py [ROUNDS]`` (starts a
throw-away server of its own; the same settings as the test fixtures).

Measured per test, median of ROUNDS, for an empty schema and for a schema of
20 tables with an index each; the variants alternate round by round, so a
machine whose load changes (other test runs) slows them alike, and the WAL
each writes (which every WAL reader of the server must read past) is given
beside the time:

* template copy: ``CREATE DATABASE t TEMPLATE tpl`` + ``DROP DATABASE``, what
  ``otpy_dsn`` does (``STRATEGY WAL_LOG``, PostgreSQL 15's default, and
  ``FILE_COPY``, the older one, which checkpoints twice);
* schema build: a database from ``template1`` with the schema's statements
  run in it, what a fixture without a template would do;
* truncate: ``TRUNCATE`` every table of one shared database (no fresh
  database, but state such as sequences and slots survives);
* rolled-back transaction: ``BEGIN`` + ``ROLLBACK`` on one connection, the
  sandbox the plugin does not offer (see docs/testing.md for why).
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from otpy.pg.testing import PostgresServer, create_database, create_template, drop_database

SCHEMA = [
    stmt
    for i in range(20)
    for stmt in (
        f"CREATE TABLE t{i} (id bigserial PRIMARY KEY, name text NOT NULL, at timestamptz)",
        f"CREATE INDEX ON t{i} (name)",
    )
]


def timed(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def line(label: str, times: list[float], extra: str = "") -> None:
    print(f"  {label:<30} {statistics.median(times) * 1000:7.1f}{extra}")


def main(rounds: int) -> None:
    with PostgresServer() as server, psycopg.connect(server.dsn, autocommit=True) as admin:
        version = admin.execute("SHOW server_version").fetchone()
        print(f"PostgreSQL {version[0] if version else '?'}, {rounds} rounds, median ms per test")
        print("(the variants alternate round by round, so they share the machine's load)")

        def wal() -> int:
            row = admin.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
            return int(row[0]) if row else 0

        for label, schema in (("empty schema", []), ("20 tables + indexes", SCHEMA)):
            template = create_template(server.dsn, f"tpl_{len(schema)}", schema)
            times: dict[str, list[float]] = {"WAL_LOG": [], "FILE_COPY": [], "build": []}
            wal_bytes: dict[str, list[float]] = {"WAL_LOG": [], "FILE_COPY": [], "build": []}

            def copy(strategy: str, template: str = template) -> None:
                admin.execute(
                    sql.SQL("CREATE DATABASE c TEMPLATE {} STRATEGY {}").format(
                        sql.Identifier(template), sql.SQL(strategy)
                    )
                )
                admin.execute("DROP DATABASE c")

            def build(schema: list[str] = schema) -> None:
                dsn = create_database(server.dsn, "b")
                with psycopg.connect(dsn, autocommit=True) as conn:
                    for statement in schema:
                        conn.execute(statement.encode())
                drop_database(server.dsn, "b")

            steps: dict[str, Callable[[], object]] = {
                "WAL_LOG": functools.partial(copy, "WAL_LOG"),
                "FILE_COPY": functools.partial(copy, "FILE_COPY"),
                "build": build,
            }
            for i in range(rounds):
                order = list(steps) if i % 2 else list(reversed(steps))
                for key in order:
                    before = wal()
                    times[key].append(timed(steps[key]))
                    wal_bytes[key].append(wal() - before)
            print(f"  {label}:")
            for key, name in (
                ("WAL_LOG", "template copy, WAL_LOG"),
                ("FILE_COPY", "template copy, FILE_COPY"),
                ("build", "schema build"),
            ):
                kib = statistics.median(wal_bytes[key]) / 1024
                line("  " + name, times[key], f"   ({kib:,.0f} KiB of WAL)")
            drop_database(server.dsn, template)

        shared = create_database(server.dsn, "shared")
        with psycopg.connect(shared, autocommit=True) as conn:
            for statement in SCHEMA:
                conn.execute(statement.encode())
            truncate = "TRUNCATE " + ", ".join(f"t{i}" for i in range(20)) + " RESTART IDENTITY"

            def rollback() -> None:
                conn.execute("BEGIN")
                conn.execute("INSERT INTO t0 (name) VALUES ('x')")
                conn.execute("ROLLBACK")

            line("truncate 20 tables", [timed(lambda: conn.execute(truncate.encode()))
                                         for _ in range(rounds)])  # fmt: skip
            line("rolled-back transaction", [timed(rollback) for _ in range(rounds)])


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
