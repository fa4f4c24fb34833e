"""What a clean database per test costs, by way of isolation (docs/testing.md has the figures).

Run: ``.venv/bin/python tests/kit/bench_isolation.py [ROUNDS]`` (starts a
throw-away server of its own; the same settings as the test fixtures).

Measured per test, median of ROUNDS, for an empty schema and for a schema of
20 tables with an index each:

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

from otpy.testing import PostgresServer, create_database, create_template, drop_database

SCHEMA = [
    stmt
    for i in range(20)
    for stmt in (
        f"CREATE TABLE t{i} (id bigserial PRIMARY KEY, name text NOT NULL, at timestamptz)",
        f"CREATE INDEX ON t{i} (name)",
    )
]


def median_ms(rounds: int, step: Callable[[int], object]) -> float:
    times = []
    for i in range(rounds):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def line(label: str, ms: float) -> None:
    print(f"  {label:<28} {ms:7.1f}")


def main(rounds: int) -> None:
    with PostgresServer() as server, psycopg.connect(server.dsn, autocommit=True) as admin:
        version = admin.execute("SHOW server_version").fetchone()
        print(f"PostgreSQL {version[0] if version else '?'}, {rounds} rounds, median ms per test")
        for label, schema in (("empty schema", []), ("20 tables + indexes", SCHEMA)):
            template = create_template(server.dsn, f"tpl_{len(schema)}", schema)

            def copy(i: int, strategy: str, template: str = template) -> None:
                admin.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY {}").format(
                        sql.Identifier(f"c{i}"), sql.Identifier(template), sql.SQL(strategy)
                    )
                )
                admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(f"c{i}")))

            def copy_as(strategy: str, i: int) -> None:
                copy(i, strategy)

            def build(i: int, schema: list[str] = schema) -> None:
                dsn = create_database(server.dsn, f"b{i}")
                with psycopg.connect(dsn, autocommit=True) as conn:
                    for statement in schema:
                        conn.execute(statement.encode())
                drop_database(server.dsn, f"b{i}")

            print(f"  {label}:")
            for strategy in ("WAL_LOG", "FILE_COPY"):
                ms = median_ms(rounds, functools.partial(copy_as, strategy))
                line(f"  template copy, {strategy}", ms)
            line("  schema build", median_ms(rounds, build))
            drop_database(server.dsn, template)

        shared = create_database(server.dsn, "shared")
        with psycopg.connect(shared, autocommit=True) as conn:
            for statement in SCHEMA:
                conn.execute(statement.encode())
            truncate = "TRUNCATE " + ", ".join(f"t{i}" for i in range(20)) + " RESTART IDENTITY"
            line("truncate 20 tables", median_ms(rounds, lambda i: conn.execute(truncate.encode())))

            def rollback(i: int) -> None:
                conn.execute("BEGIN")
                conn.execute("INSERT INTO t0 (name) VALUES ('x')")
                conn.execute("ROLLBACK")

            line("rolled-back transaction", median_ms(rounds, rollback))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
