"""Benchmark: otpy's TrioConnection against psycopg's own AsyncConnection on asyncio.

Both run the same psycopg code (cursors, adapters, protocol generators); only
the waiting differs (trio's wait_readable/wait_writable vs asyncio's loop),
so this measures the cost of the trio driver.  Workloads:

* ``seq``: sequential ``SELECT %s::int`` round trips on one connection;
* ``fetch1k``: fetching a 1000-row, two-column result;
* ``conc8``: 8 connections, each running ``SELECT %s::int`` round trips
  concurrently (total operations per second).

Each repeat runs every workload once per driver, alternating which driver goes
first; the table reports medians.  Usage::

    .venv/bin/python benchmarks/connection.py            # own throw-away server
    .venv/bin/python benchmarks/connection.py --dsn "host=... dbname=..." --repeat 7
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otpy.pg.connection import TrioConnection
from otpy.pg.testing import PostgresServer

FETCH_QUERY = "SELECT g, 'row number ' || g FROM generate_series(1, 1000) g"


# --- workloads, written once against the psycopg async API ----------------------------


async def seq(conn: Any, n: int) -> int:
    for i in range(n):
        cur = await conn.execute("SELECT %s::int", (i,))
        row = await cur.fetchone()
        assert row[0] == i
    return n


async def fetch1k(conn: Any, n: int) -> int:
    for _ in range(n):
        cur = await conn.execute(FETCH_QUERY)
        rows = await cur.fetchall()
        assert len(rows) == 1000
    return n


# --- drivers --------------------------------------------------------------------------


async def _trio_measure(dsn: str, workload: str, n: int, conns: int) -> float:
    connections = [await TrioConnection.connect(dsn, autocommit=True) for _ in range(conns)]
    try:
        fn: Callable[[Any, int], Awaitable[int]] = seq if workload != "fetch1k" else fetch1k
        await fn(connections[0], min(n, 50))  # warm up (prepared statements, caches)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for c in connections:
                nursery.start_soon(fn, c, n)
        elapsed = time.perf_counter() - start
    finally:
        for c in connections:
            await c.close()
    return n * conns / elapsed


async def _asyncio_measure(dsn: str, workload: str, n: int, conns: int) -> float:
    connections = [
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(conns)
    ]
    try:
        fn: Callable[[Any, int], Awaitable[int]] = seq if workload != "fetch1k" else fetch1k
        await fn(connections[0], min(n, 50))
        start = time.perf_counter()
        await asyncio.gather(*(fn(c, n) for c in connections))
        elapsed = time.perf_counter() - start
    finally:
        for c in connections:
            await c.close()
    return n * conns / elapsed


def run_trio(dsn: str, workload: str, n: int, conns: int) -> float:
    return trio.run(_trio_measure, dsn, workload, n, conns)


def run_asyncio(dsn: str, workload: str, n: int, conns: int) -> float:
    return asyncio.run(_asyncio_measure(dsn, workload, n, conns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="server to use (default: start a throw-away one)")
    parser.add_argument("--repeat", type=int, default=5, help="repeats; medians are shown")
    parser.add_argument("--seq", type=int, default=3000, help="round trips per seq run")
    parser.add_argument("--fetch", type=int, default=200, help="1k-row fetches per run")
    parser.add_argument("--conc", type=int, default=1000, help="round trips per connection")
    args = parser.parse_args(argv)

    workloads = [
        ("seq  SELECT %s::int", "seq", args.seq, 1),
        ("fetch 1000 rows", "fetch1k", args.fetch, 1),
        ("8 conns SELECT %s::int", "conc8", args.conc, 8),
    ]
    with ExitStack() as stack:
        dsn = args.dsn
        if dsn is None:
            server = stack.enter_context(PostgresServer())
            dsn = server.dsn
        results: dict[str, dict[str, list[float]]] = {
            w[0]: {"trio": [], "asyncio": []} for w in workloads
        }
        for r in range(args.repeat):
            for label, name, n, conns in workloads:
                order = [("trio", run_trio), ("asyncio", run_asyncio)]
                if r % 2:
                    order.reverse()
                for driver, runner in order:
                    results[label][driver].append(runner(dsn, name, n, conns))
            print(f"repeat {r + 1}/{args.repeat} done", file=sys.stderr)

    print(
        f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__}, libpq {psycopg.pq.version()}), "
        f"trio {trio.__version__}, Python {sys.version.split()[0]}, "
        f"median of {args.repeat} runs"
    )
    header = (
        f"| {'workload':<24} | {'trio ops/s':>10} | {'asyncio ops/s':>13} "
        f"| {'trio/asyncio':>12} | {'paired ratios: median [min-max]':>31} |"
    )
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for label, *_ in workloads:
        trio_runs, asyncio_runs = results[label]["trio"], results[label]["asyncio"]
        t = statistics.median(trio_runs)
        a = statistics.median(asyncio_runs)
        # Runs of one repeat are adjacent in time, so their ratio cancels out
        # most of the load that other processes put on a shared machine.
        paired = [x / y for x, y in zip(trio_runs, asyncio_runs, strict=True)]
        spread = f"{statistics.median(paired):.2f} [{min(paired):.2f}-{max(paired):.2f}]"
        print(f"| {label:<24} | {t:>10,.0f} | {a:>13,.0f} | {t / a:>12.2f} | {spread:>31} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
