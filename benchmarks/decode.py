"""Benchmark: pgoutput decoding throughput (rows/s), otpy vs pypgoutput.

Captures real pgoutput streams (protocol 1, text and binary format) of a
5-column and a 20-column table from a throw-away PostgreSQL (or ``--dsn``),
then decodes the same bytes, repeatedly, with:

* ``otpy messages``: :class:`PgOutputDecoder` only (bytes -> message objects);
* ``otpy rows``: messages + :class:`ValueDecoder` (-> ``dict`` of Python values),
  what a replication reader actually needs;
* the same two with the decoder *interpreted*, when the install compiled it
  with mypyc (what users without a C compiler get);
* ``pypgoutput``: the pure-Python decoder classes of ``pypgoutput`` 0.0.3
  (bytes -> message objects with *string* column values: no type conversion).
  Only its stdlib-only ``decoders`` module is loaded, from a virtualenv under
  ``benchmarks/.venvs/`` (created on first use) so that its heavy dependencies
  (psycopg2, pydantic) are never installed.  It has no binary-format support.

Prints medians over ``--repeat`` runs and the ratio to pypgoutput.

    .venv/bin/python benchmarks/decode.py [--dsn DSN] [--rows N] [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg

from otpy.pg.replication import ValueDecoder, pgoutput
from otpy.pg.testing import PostgresServer, interpreted_module

HERE = Path(__file__).resolve().parent
PYPGOUTPUT_VENV = HERE / ".venvs" / "pypgoutput"
PYPGOUTPUT_VERSION = "0.0.3"

TABLES = {
    "5 columns": """CREATE TABLE bench5 (
        id bigint PRIMARY KEY, name text, amount numeric(12, 2), created timestamptz,
        active boolean)""",
    "20 columns": """CREATE TABLE bench20 (
        id bigint PRIMARY KEY, c1 integer, c2 bigint, c3 smallint, c4 text, c5 varchar(40),
        c6 numeric(12, 2), c7 double precision, c8 real, c9 boolean, c10 date,
        c11 timestamp, c12 timestamptz, c13 uuid, c14 jsonb, c15 text, c16 integer,
        c17 bytea, c18 interval, c19 text)""",
}
INSERTS = {
    "5 columns": """INSERT INTO bench5
        SELECT g, 'name ' || g, g * 1.25, now() - g * interval '1 minute', g %% 2 = 0
        FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g""",
    "20 columns": """INSERT INTO bench20
        SELECT g, g, g * 1000000, g %% 30000, 'text ' || g, md5(g::text), g * 1.25, g / 3.0,
               g / 7.0, g %% 3 = 0, date '2020-01-01' + (g %% 1000)::int,
               timestamp '2020-01-01' + g * interval '1 second',
               now() - g * interval '1 minute', md5(g::text)::uuid,
               jsonb_build_object('k', g, 'v', 'x'), repeat('y', (g %% 50)::int), NULL,
               '\\xdeadbeef'::bytea, g * interval '1 second', 'last'
        FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g""",
}
ROWS_PER_TRANSACTION = 100


def capture(dsn: str, rows: int) -> dict[tuple[str, str], list[bytes]]:
    """Run the workload once per table and peek its pgoutput stream in both formats."""
    out: dict[tuple[str, str], list[bytes]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for index, (label, ddl) in enumerate(TABLES.items()):
            table = ddl.split()[2]
            slot, publication = f"bench_slot_{index}", f"bench_pub_{index}"
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(ddl)
            conn.execute(f"DROP PUBLICATION IF EXISTS {publication}")
            conn.execute(f"CREATE PUBLICATION {publication} FOR TABLE {table}")
            with contextlib.suppress(psycopg.errors.UndefinedObject):
                conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])
            try:
                for lo in range(1, rows + 1, ROWS_PER_TRANSACTION):
                    hi = min(lo + ROWS_PER_TRANSACTION - 1, rows)
                    conn.execute(INSERTS[label], {"lo": lo, "hi": hi})
                conn.execute("CHECKPOINT")  # the SQL functions decode flushed WAL only
                for fmt in ("text", "binary"):
                    cursor = conn.execute(
                        "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
                        " 'proto_version', '1', 'publication_names', %s, 'binary', %s)",
                        [slot, publication, "true" if fmt == "binary" else "false"],
                    )
                    out[label, fmt] = [bytes(row[0]) for row in cursor]
            finally:
                conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
                conn.execute(f"DROP PUBLICATION {publication}")
                conn.execute(f"DROP TABLE {table}")
    return out


def otpy_decoders(module: ModuleType) -> dict[str, Callable[[list[bytes]], int]]:
    """The two otpy figures, decoding with the pgoutput module ``module``."""
    insert, relation = module.Insert, module.Relation

    def messages(stream: list[bytes]) -> int:
        decode = module.PgOutputDecoder().decode
        rows = 0
        for raw in stream:
            if type(decode(raw)) is insert:
                rows += 1
        return rows

    def rows(stream: list[bytes]) -> int:
        decode = module.PgOutputDecoder().decode
        values = ValueDecoder()
        rows = 0
        for raw in stream:
            message = decode(raw)
            if type(message) is insert:
                values.decode(message.relation_oid, message.new)
                rows += 1
            elif type(message) is relation:
                values.add_relation(message)
        return rows

    return {"messages": messages, "rows": rows}


def load_pypgoutput() -> ModuleType | None:
    """pypgoutput's ``decoders`` module (stdlib-only), from its own virtualenv."""
    python = PYPGOUTPUT_VENV / "bin" / "python"
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(PYPGOUTPUT_VENV)], check=True)
        found = list(PYPGOUTPUT_VENV.glob("lib/python*/site-packages/pypgoutput/decoders.py"))
        if not found:
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "--no-deps",
                 f"pypgoutput=={PYPGOUTPUT_VERSION}"],
                check=True,
            )  # fmt: skip
            found = list(PYPGOUTPUT_VENV.glob("lib/python*/site-packages/pypgoutput/decoders.py"))
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"pypgoutput unavailable ({exc}): comparison skipped", file=sys.stderr)
        return None
    if not found:
        return None
    spec = importlib.util.spec_from_file_location("pypgoutput_decoders", found[0])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pypgoutput_decoder(module: ModuleType) -> Callable[[list[bytes]], int]:
    classes = {
        ord("B"): module.Begin,
        ord("C"): module.Commit,
        ord("R"): module.Relation,
        ord("I"): module.Insert,
        ord("U"): module.Update,
        ord("D"): module.Delete,
        ord("T"): module.Truncate,
        ord("O"): module.Origin,
    }
    insert = module.Insert

    def run(stream: list[bytes]) -> int:
        rows = 0
        for raw in stream:
            if type(classes[raw[0]](raw)) is insert:
                rows += 1
        return rows

    return run


def measure(
    runs: dict[str, Callable[[list[bytes]], int]], stream: list[bytes], repeat: int
) -> dict[str, list[float]]:
    """Rows/s of each decoder, ``repeat`` times, *interleaved*.

    The machine is shared: load drifts during a run.  Timing the decoders
    in turn within each repetition lets the ratios be computed per
    repetition (paired), which drift affects far less than separate medians.
    """
    for run in runs.values():
        run(stream)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            rows = run(stream)
            rates[name].append(rows / (time.perf_counter() - start))
    return rates


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    with PostgresServer() as pg:
        yield pg.dsn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="use this server instead of a throw-away one")
    parser.add_argument("--rows", type=int, default=20_000, help="rows per table (20000)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per figure (7)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    with server(args.dsn) as dsn:
        streams = capture(dsn, args.rows)
    pypgoutput = load_pypgoutput()
    variants = {"otpy": otpy_decoders(pgoutput)}
    if pgoutput.is_compiled():
        variants["otpy interpreted"] = otpy_decoders(
            interpreted_module("otpy.pg.replication.pgoutput")
        )
    results: list[dict[str, Any]] = []
    for (label, fmt), stream in streams.items():
        runs: dict[str, Callable[[list[bytes]], int]] = {}
        if pypgoutput is not None and fmt == "text":
            runs["pypgoutput"] = pypgoutput_decoder(pypgoutput)
        for prefix, decoders in variants.items():
            for what, run in decoders.items():
                runs[f"{prefix} {what}"] = run
        rates = measure(runs, stream, args.repeat)
        base = rates.get("pypgoutput")
        for name, values in rates.items():
            ratio = (
                statistics.median(v / b for v, b in zip(values, base, strict=True))
                if base is not None
                else None
            )
            results.append(
                dict(table=label, format=fmt, decoder=name, rows_s=statistics.median(values),
                     ratio=ratio)
            )  # fmt: skip

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"pgoutput decoding, {args.rows} rows per table, median of {args.repeat} interleaved"
        " runs; ratios are medians of per-run ratios; otpy's decoder is"
        f" {'compiled by mypyc' if pgoutput.is_compiled() else 'interpreted (not compiled)'}"
    )
    print()
    print("| table | format | decoder | rows/s | vs pypgoutput |")
    print("|---|---|---|---:|---:|")
    for r in results:
        shown = (
            f"{r['ratio']:.1f}x"
            if r.get("ratio")
            else ("1.0x" if r["decoder"] == "pypgoutput" else "n/a")
        )
        print(f"| {r['table']} | {r['format']} | {r['decoder']} | {r['rows_s']:,.0f} | {shown} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
