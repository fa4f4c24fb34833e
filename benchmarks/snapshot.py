"""Benchmark: the otpy initial snapshot vs pg_dump, raw COPY and psycopg's decoded COPY.

A 1 000 000-row table read whole: ``--table bench``, the 5-column table of
``benchmarks/replication.py`` (int key, int, text, float8, timestamptz), or
``--table wide``, the 14 typed columns of ``benchmarks/replication_wide.py``
(numeric, jsonb, uuid, int[], text[], bytea, inet, date, timestamptz, bool,
text, float8, an enum: registered on psycopg's connection too), by:

* ``pg_dump --data-only`` of the table, output counted (the server's bindir);
* ``COPY bench TO STDOUT`` through psycopg as raw bytes, no decoding (the limit);
* psycopg's ``copy.rows()`` with the column types set (text format, the
  decoded limit: tuples of Python values, what otpy decodes with), also in
  binary (otpy's format for these types), and binary with each row turned
  into a dict in a ``Change`` (what otpy hands over, without otpy);
* otpy: ``wal_reader.subscribe(..., {"snapshot": "initial_only"})`` with a
  handler that counts rows: ``Change`` values with dict rows, in batches,
  handler calls; on one connection and with parallel block ranges.

Every consumer's row count is checked.  Usage::

    .venv/bin/python benchmarks/snapshot.py              # own throw-away server
    .venv/bin/python benchmarks/snapshot.py --repeat 5 --rows 1000000
    .venv/bin/python benchmarks/snapshot.py --table wide --rows 300000
    .venv/bin/python benchmarks/snapshot.py --dsn "host=... dbname=..."
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import psycopg
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import replication
import replication_wide
from psycopg.types.enum import EnumInfo, register_enum
from replication import NoOp, sql

from otpy import DynamicSupervisor
from otpy import start as start_actor
from otpy.pg import wal_reader
from otpy.pg.replication.changes import Change
from otpy.pg.testing import PostgresServer, find_bindir


class Table:
    """A benchmark table: how to create and fill it, its publication and column types."""

    def __init__(
        self,
        name: str,
        setup: list[str],
        row: str,
        publication: str,
        columns: tuple[str, ...],
        types: list[str],
    ) -> None:
        self.name, self.setup, self.row = name, setup, row
        self.publication, self.columns, self.types = publication, columns, types


TABLES = {
    "bench": Table(
        "bench",
        [replication.TABLE],
        replication.ROW,
        replication.PUB,
        ("id", "a", "b", "c", "d"),
        ["int4", "int4", "text", "float8", "timestamptz"],
    ),
    "wide": Table(
        "wide",
        replication_wide.SETUP,
        replication_wide.ROW,
        replication_wide.PUB,
        tuple(
            [
                "id",
                "amount",
                "doc",
                "uid",
                "nums",
                "tags",
                "blob",
                "addr",
                "day",
                "at",
                "flag",
                "note",
                "score",
                "feeling",
            ]
        ),
        [
            "int4",
            "numeric",
            "jsonb",
            "uuid",
            "int4[]",
            "text[]",
            "bytea",
            "inet",
            "date",
            "timestamptz",
            "bool",
            "text",
            "float8",
            "mood",
        ],
    ),
}


def run_pg_dump(dsn: str, table: Table) -> int:
    """Rows in ``pg_dump --data-only -t TABLE`` output (the COPY lines before ``\\.``)."""
    args = [str(find_bindir() / "pg_dump"), "--data-only", f"--table={table.name}", "-d", dsn]
    out = subprocess.run(args, capture_output=True, check=True).stdout
    data = out.split(b"FROM stdin;\n", 1)[1].split(b"\\.\n", 1)[0]
    return data.count(b"\n")


def run_raw_copy(dsn: str, table: Table) -> int:
    """Rows of ``COPY TABLE TO STDOUT`` read as raw bytes (newlines counted)."""
    lines = 0
    statement = f"COPY {table.name} TO STDOUT"
    with psycopg.connect(dsn) as conn, conn.cursor().copy(statement) as copy:
        for block in copy:
            lines += bytes(block).count(b"\n")
    return lines


def run_copy_rows(dsn: str, table: Table, binary: bool = False, changes: bool = False) -> int:
    """Rows of ``COPY TABLE TO STDOUT`` decoded by psycopg's ``copy.rows()`` (types set).

    With ``changes``, each row also becomes what a handler receives (a dict in
    a ``Change``): the cost otpy adds to decoding, measured without otpy.
    """
    rows = 0
    columns = table.columns
    statement = f"COPY {table.name} TO STDOUT" + (" (FORMAT BINARY)" if binary else "")
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone TO 'UTC'")
        if "mood" in table.types:  # decoded to enum members, as otpy decodes it
            info = EnumInfo.fetch(conn, "mood")
            assert info is not None
            register_enum(info, conn)
        with conn.cursor().copy(statement) as copy:
            copy.set_types(table.types)
            if changes:
                out = []
                for row in copy.rows():
                    out.append(
                        Change(
                            table.name, "read", dict(zip(columns, row, strict=True)), None, "public"
                        )
                    )
                    if len(out) == 5000:
                        rows += len(out)
                        out = []
                rows += len(out)
            else:
                for _ in copy.rows():
                    rows += 1
    return rows


def run_otpy(dsn: str, table: Table, expected: int, parallelism: int) -> int:
    """Rows delivered by an ``initial_only`` snapshot subscription."""

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            await start_actor(nursery, DynamicSupervisor(), name=wal_reader.READERS_SUPERVISOR)
            handler = NoOp(expected)
            ref = await wal_reader.subscribe(
                handler,
                dsn,
                "bench_snapshot",
                [table.publication],
                {
                    "snapshot": "initial_only",
                    "snapshot_parallelism": parallelism,
                    "snapshot_chunk_size": 5000,
                },
            )
            await ref.wait_stopped()
            nursery.cancel_scope.cancel()
        return handler.rows

    return trio.run(main)


def peak_rss_mb() -> float:
    """This process's peak RSS in MB.

    ``VmHWM`` where there is one (Linux): ``ru_maxrss`` survives ``exec`` and
    so would report the parent's size at the fork, not this process's.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss(dsn: str, table: Table, rows: int) -> float:
    """Peak RSS (MB) of a fresh process that snapshots the table (bounded memory check)."""
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", dsn, table.name, str(rows)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.split()[-1])


def measure(fn: Callable[[], int], expected: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one run; checks the row count."""
    cpu = time.process_time()
    start = time.perf_counter()
    rows = fn()
    elapsed = time.perf_counter() - start
    if rows != expected:
        raise RuntimeError(f"{fn!r} read {rows} rows, expected {expected}")
    return elapsed, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="an existing server (default: a throw-away one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--rss", action="store_true", help="also measure the peak RSS")
    parser.add_argument("--table", choices=sorted(TABLES), default="bench")
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        dsn, name, rows = args.rss_child
        run_otpy(dsn, TABLES[name], int(rows), 1)
        print(peak_rss_mb())
        return 0
    table = TABLES[args.table]
    with ExitStack() as stack:
        dsn = args.dsn
        if dsn is None:
            server = stack.enter_context(PostgresServer())
            dsn = server.dsn
        sql(dsn, *table.setup)
        sql(dsn, f"TRUNCATE {table.name}")
        sql(
            dsn,
            f"INSERT INTO {table.name} SELECT {table.row} FROM generate_series(1, {args.rows}) g",
        )
        sql(dsn, f"VACUUM ANALYZE {table.name}")
        if not sql(dsn, f"SELECT 1 FROM pg_publication WHERE pubname = '{table.publication}'"):
            sql(dsn, f"CREATE PUBLICATION {table.publication} FOR TABLE {table.name}")
        n = args.rows
        consumers: dict[str, Callable[[], int]] = {
            "pg_dump --data-only": lambda: run_pg_dump(dsn, table),
            "COPY raw bytes": lambda: run_raw_copy(dsn, table),
            "psycopg copy.rows()": lambda: run_copy_rows(dsn, table),
            "copy.rows() binary": lambda: run_copy_rows(dsn, table, binary=True),
            "copy.rows() binary+Change": lambda: run_copy_rows(
                dsn, table, binary=True, changes=True
            ),
            "otpy, 1 connection": lambda: run_otpy(dsn, table, n, 1),
            f"otpy, {args.parallel} connections": lambda: run_otpy(dsn, table, n, args.parallel),
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in consumers}
        for _ in range(args.repeat):
            for name, fn in consumers.items():
                results[name].append(measure(fn, args.rows))
        memory = rss(dsn, table, args.rows) if args.rss else None
    wall = {n: statistics.median(r[0] for r in runs) for n, runs in results.items()}
    cpu = {n: statistics.median(r[1] for r in runs) for n, runs in results.items()}
    decoded = wall["psycopg copy.rows()"]
    raw = wall["COPY raw bytes"]
    print()
    print(
        f"Snapshot benchmark: {args.rows:,} rows of table {table.name} "
        f"(medians of {args.repeat}; {os.cpu_count()} CPUs)"
    )
    print(
        f"{'consumer':26} {'seconds':>8} {'rows/s':>11} {'vs copy.rows()':>15} "
        f"{'vs raw COPY':>12} {'client CPU s':>13}"
    )
    for name in consumers:
        seconds = wall[name]
        print(
            f"{name:26} {seconds:8.3f} {args.rows / seconds:11,.0f} {decoded / seconds:14.2f}x "
            f"{raw / seconds:11.2f}x {cpu[name]:13.3f}"
        )
    if memory is not None:
        print(f"otpy snapshot process peak RSS through {args.rows:,} rows: {memory:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
