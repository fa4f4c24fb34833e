"""Benchmark: the otpy WAL reader on a wide table of common types.

The comparison of ``benchmarks/replication.py`` (same helpers, same rules:
one persistent slot per consumer, the workload committed once, consumers
interleaved in a rotating order, a run that missed rows is dropped) on a
14-column table: int key, numeric, jsonb, uuid, int[], text[], bytea, inet,
date, timestamptz, bool, text, float8 and an enum.

Workloads: ``100k-row txn`` (one transaction) and ``10k small txns`` (one row
each).  Consumers:

* ``pg_recvlogical`` and ``pg_recvlogical binary`` (``-o binary=true``)
  writing to a file up to ``pg_current_wal_insert_lsn()``: the limit;
* ``otpy all`` / ``otpy key``: the reader with a handler that reads every
  value of every row / only its ``id`` (values decoded on demand are then
  never decoded), text format; ``otpy binary all`` / ``otpy binary key``:
  the same with ``binary`` on, compared with ``pg_recvlogical binary``;
* ``otpy binary gc.freeze()``: after ``gc.freeze()``, the tuning
  docs/operations.md describes (see ``benchmarks/reader_gc.py``);
* ``psycopg2+pypgoutput``: the peer of ``replication.py`` (text only:
  pypgoutput does not read binary columns).

Usage::

    .venv/bin/python benchmarks/replication_wide.py --repeat 5
    .venv/bin/python benchmarks/replication_wide.py --only "100k-row txn"
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replication import (
    Consumer,
    NoOp,
    ReadAll,
    ReadKey,
    consumers,
    print_table,
    print_versus,
    run_baseline,
    run_otpy,
    sql,
    throughput,
)

from otpy.pg.replication.pgoutput import is_compiled
from otpy.pg.testing import PostgresServer

PUB = "bench_wide_pub"
SETUP = [
    "DO $$ BEGIN CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); "
    "EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    """CREATE TABLE IF NOT EXISTS wide (
        id int PRIMARY KEY,
        amount numeric(12, 2),
        doc jsonb,
        uid uuid,
        nums int[],
        tags text[],
        blob bytea,
        addr inet,
        day date,
        at timestamptz,
        flag bool,
        note text,
        score float8,
        feeling mood)""",
]
ROW = """g,
    (g * 1.37)::numeric(12, 2),
    jsonb_build_object('id', g, 'name', 'item ' || g, 'tags', jsonb_build_array('a', 'b')),
    md5(g::text)::uuid,
    ARRAY[g, g + 1, g + 2],
    ARRAY['red', 'green', 'v' || g],
    decode(md5(g::text), 'hex'),
    ('10.' || (g % 250) || '.' || (g % 200) || '.1')::inet,
    date '2024-01-01' + (g % 1000),
    timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',
    g % 2 = 0,
    'a note about row ' || g,
    g / 7.0,
    (ARRAY['sad', 'ok', 'happy']::mood[])[g % 3 + 1]"""
WORKLOADS = {
    "wide 100k-row txn": (
        f"INSERT INTO wide SELECT {ROW} FROM generate_series(1, 100000) g",
        100_000,
    ),
    "wide 10k small txns": (
        "DO $$ BEGIN FOR g IN 1..10000 LOOP "
        f"INSERT INTO wide SELECT {ROW}; COMMIT; END LOOP; END $$",
        10_000,
    ),
}


def wide_consumers(baseline: Path | None = None) -> dict[str, Consumer]:
    """pg_recvlogical (text, binary), otpy (text, binary) x (all values, key only), the peer.

    With ``baseline``, also the otpy that interpreter imports (all values).
    """
    base = consumers(PUB, recvlogical_binary=True)

    def otpy(binary: bool, handler: type[NoOp], freeze: bool = False) -> Consumer:
        options = {"binary": True} if binary else {}
        return lambda dsn, slot, rows, end: run_otpy(
            dsn, slot, rows, options, handler, publication=PUB, freeze=freeze
        )

    out = {name: base[name] for name in ("pg_recvlogical", "pg_recvlogical binary")}
    out["otpy all"] = otpy(False, ReadAll)
    out["otpy key"] = otpy(False, ReadKey)
    out["otpy binary all"] = otpy(True, ReadAll)
    out["otpy binary key"] = otpy(True, ReadKey)
    out["otpy binary gc.freeze()"] = otpy(True, ReadAll, freeze=True)
    if baseline is not None:
        for binary in (False, True):
            out[f"otpy {'binary ' if binary else ''}all baseline"] = (
                lambda dsn, slot, rows, end, binary=binary: run_baseline(
                    baseline, dsn, slot, rows, PUB, binary, "all"
                )
            )
    if "psycopg2+pypgoutput" in base:
        out["psycopg2+pypgoutput"] = base["psycopg2+pypgoutput"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="an existing server (default: a throw-away one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", action="append", help="run only this workload (repeatable)")
    parser.add_argument("--consumer", action="append", help="run only this consumer (repeatable)")
    parser.add_argument(
        "--baseline", type=Path, help="python of another otpy install, run side by side"
    )
    args = parser.parse_args(argv)
    workloads = {k: v for k, v in WORKLOADS.items() if not args.only or k in args.only}
    contenders = wide_consumers(args.baseline)
    if args.consumer:
        contenders = {k: v for k, v in contenders.items() if k in args.consumer}
    with ExitStack() as stack:
        dsn = args.dsn
        if dsn is None:
            dsn = stack.enter_context(PostgresServer()).dsn
        sql(dsn, *SETUP)
        if not sql(dsn, f"SELECT 1 FROM pg_publication WHERE pubname = '{PUB}'"):
            sql(dsn, f"CREATE PUBLICATION {PUB} FOR TABLE wide")
        results = throughput(dsn, args.repeat, workloads, contenders, table="wide")
    print()
    print(
        f"WAL reader, wide table (medians of {args.repeat}; {os.cpu_count()} CPUs; "
        f"compiled decoder: {is_compiled()})"
    )
    baselines = {name: "pg_recvlogical binary" for name in contenders if "binary" in name}
    baselines["pg_recvlogical binary"] = "pg_recvlogical binary"
    print_table(results, workloads, baselines, peer=("otpy all", "psycopg2+pypgoutput"))
    if args.baseline:
        pairs = [("otpy all", "otpy all baseline"), ("otpy binary all", "otpy binary all baseline")]
        print_versus(results, workloads, pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
