"""Benchmark: otpy's pool against psycopg_pool, asyncpg's pool and a naive trio channel.

32 tasks share 8 connections; each task checks a connection out, runs one
statement, and gives it back, ``--ops`` times.  Workloads:

* ``select``: ``SELECT $1::int`` (``%s`` for psycopg), result fetched;
* ``insert``: a one-row ``INSERT`` into a small table.

Contenders (each one a fresh event loop per run; connections opened and
warmed up before the clock starts):

* ``otpy``: ``async with pool.connection("bench") as conn: await conn.execute(...)``;
* ``otpy query``: ``await pool.query("bench", sql, params)`` (also builds a QueryResult);
* ``trio channel``: a trio memory channel holding 8 autocommit TrioConnections
  (receive, execute, send back): no pool logic at all, the limit for this
  architecture;
* ``psycopg_pool``: ``AsyncConnectionPool`` on asyncio, default settings except
  ``min_size=8`` (so: transactions, hence ``COMMIT`` at the end of each block);
* ``asyncpg``: ``asyncpg.create_pool`` on asyncio, default settings except
  ``min_size=max_size=8`` (so: ``reset()`` on every release);
* for reference, not targets: ``psycopg_pool ac`` (autocommit connections) and
  ``asyncpg noreset`` (a no-op ``reset``), i.e. those pools doing what otpy does.

Repeats alternate the order of the contenders; the table shows medians (ops/s)
and, per contender, the median over the repeats of otpy's rate divided by its
rate in the same repeat (a paired ratio: the machine's load drifts between
repeats, and pairing cancels most of it).  Usage::

    .venv/bin/python benchmarks/pool.py                 # own throw-away server
    .venv/bin/python benchmarks/pool.py --dsn "host=... dbname=..." --repeat 7
    .venv/bin/python benchmarks/pool.py --only otpy "otpy no metrics"   # cost of the metrics
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otpy.pg import pool as otpy_pool
from otpy.pg.config import DatabaseConfig, PoolConfig, Secret
from otpy.pg.connection import TrioConnection
from otpy.testing import PostgresServer

TASKS = 32
CONNECTIONS = 8

SQL = {
    "select": ("SELECT %s::int", "SELECT $1::int"),
    "insert": (
        "INSERT INTO bench_items (task, n) VALUES (%s, %s)",
        "INSERT INTO bench_items (task, n) VALUES ($1, $2)",
    ),
}


def _params(workload: str, task: int, i: int) -> tuple[int, ...]:
    return (i,) if workload == "select" else (task, i)


def _database(dsn: str) -> DatabaseConfig:
    p = conninfo_to_dict(dsn)
    password = p.get("password")
    return DatabaseConfig(
        name="bench",
        database=str(p.get("dbname", "postgres")),
        username=str(p.get("user", "postgres")),
        host=str(p.get("host", "localhost")),
        port=int(p.get("port", 5432)),
        password=Secret(str(password)) if password else None,
    )


# --- trio contenders ------------------------------------------------------------------


async def _run_tasks_trio(body: Callable[[int], Any]) -> float:
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for task in range(TASKS):
            nursery.start_soon(body, task)
    return time.perf_counter() - start


async def _otpy(dsn: str, workload: str, ops: int, use_query: bool, timing: bool = True) -> float:
    sql = SQL[workload][0]
    config = PoolConfig(name="bench", database="bench", min_size=CONNECTIONS, max_size=CONNECTIONS)
    async with otpy_pool.open_pool("bench", config, _database(dsn), timing=timing):
        connection = otpy_pool.connection
        query = otpy_pool.query

        async def with_connection(task: int, n: int = ops) -> None:
            for i in range(n):
                async with connection("bench") as conn:
                    cur = await conn.execute(sql, _params(workload, task, i))
                    if workload == "select":
                        await cur.fetchone()

        async def with_query(task: int, n: int = ops) -> None:
            for i in range(n):
                await query("bench", sql, _params(workload, task, i))

        body = with_query if use_query else with_connection
        async with trio.open_nursery() as nursery:  # warm-up: prepared statements
            for task in range(CONNECTIONS):
                nursery.start_soon(body, task, 10)
        elapsed = await _run_tasks_trio(body)
    return TASKS * ops / elapsed


async def _trio_channel(dsn: str, workload: str, ops: int) -> float:
    sql = SQL[workload][0]
    send, receive = trio.open_memory_channel[TrioConnection[Any]](CONNECTIONS)
    conns = [await TrioConnection.connect(dsn, autocommit=True) for _ in range(CONNECTIONS)]
    for conn in conns:
        send.send_nowait(conn)
    try:

        async def body(task: int, n: int = ops) -> None:
            for i in range(n):
                conn = await receive.receive()
                try:
                    cur = await conn.execute(sql, _params(workload, task, i))
                    if workload == "select":
                        await cur.fetchone()
                finally:
                    send.send_nowait(conn)

        async with trio.open_nursery() as nursery:
            for task in range(CONNECTIONS):
                nursery.start_soon(body, task, 10)
        elapsed = await _run_tasks_trio(body)
    finally:
        for conn in conns:
            await conn.close()
    return TASKS * ops / elapsed


# --- asyncio contenders ---------------------------------------------------------------


async def _run_tasks_asyncio(body: Callable[[int], Any]) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(body(task) for task in range(TASKS)))
    return time.perf_counter() - start


async def _psycopg_pool(dsn: str, workload: str, ops: int, autocommit: bool = False) -> float:
    from psycopg_pool import AsyncConnectionPool

    sql = SQL[workload][0]
    kwargs = {"autocommit": True} if autocommit else None
    async with AsyncConnectionPool(dsn, min_size=CONNECTIONS, open=False, kwargs=kwargs) as pool:
        await pool.wait()

        async def body(task: int, n: int = ops) -> None:
            for i in range(n):
                async with pool.connection() as conn:
                    cur = await conn.execute(sql, _params(workload, task, i))
                    if workload == "select":
                        await cur.fetchone()

        await asyncio.gather(*(body(task, 10) for task in range(CONNECTIONS)))
        elapsed = await _run_tasks_asyncio(body)
    return TASKS * ops / elapsed


async def _no_reset(conn: Any) -> None:
    pass


async def _asyncpg(dsn: str, workload: str, ops: int, reset: bool = True) -> float:
    import asyncpg

    sql = SQL[workload][1]
    p = conninfo_to_dict(dsn)
    pool = await asyncpg.create_pool(
        host=p.get("host"),
        port=int(p.get("port", 5432)),
        user=p.get("user"),
        database=p.get("dbname"),
        password=p.get("password"),
        min_size=CONNECTIONS,
        max_size=CONNECTIONS,
        **({} if reset else {"reset": _no_reset}),
    )
    try:

        async def body(task: int, n: int = ops) -> None:
            for i in range(n):
                async with pool.acquire() as conn:
                    if workload == "select":
                        await conn.fetchval(sql, *_params(workload, task, i))
                    else:
                        await conn.execute(sql, *_params(workload, task, i))

        await asyncio.gather(*(body(task, 10) for task in range(CONNECTIONS)))
        elapsed = await _run_tasks_asyncio(body)
    finally:
        await pool.close()
    return TASKS * ops / elapsed


CONTENDERS: dict[str, Callable[[str, str, int], float]] = {
    "otpy": lambda dsn, w, n: trio.run(_otpy, dsn, w, n, False),
    "otpy query": lambda dsn, w, n: trio.run(_otpy, dsn, w, n, True),
    # Metrics off: no hold-time measurement (open_pool(timing=False)); otpy/x is
    # then the cost ratio of the metrics on the hot path.
    "otpy no metrics": lambda dsn, w, n: trio.run(_otpy, dsn, w, n, False, False),
    "trio channel": lambda dsn, w, n: trio.run(_trio_channel, dsn, w, n),
    "psycopg_pool": lambda dsn, w, n: asyncio.run(_psycopg_pool(dsn, w, n)),
    "asyncpg": lambda dsn, w, n: asyncio.run(_asyncpg(dsn, w, n)),
    # For reference only (not the targets): the same pools tuned to do what otpy does.
    "psycopg_pool ac": lambda dsn, w, n: asyncio.run(_psycopg_pool(dsn, w, n, autocommit=True)),
    "asyncpg noreset": lambda dsn, w, n: asyncio.run(_asyncpg(dsn, w, n, reset=False)),
}


def _prepare(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_items")
        conn.execute("CREATE TABLE bench_items (id bigserial PRIMARY KEY, task int, n int)")


def _paired_ratio(results: dict[str, list[float]], name: str) -> float:
    if "otpy" not in results:
        return float("nan")
    return statistics.median(o / x for o, x in zip(results["otpy"], results[name], strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="server to use (default: start a throw-away one)")
    parser.add_argument("--repeat", type=int, default=5, help="repeats; medians are shown")
    parser.add_argument("--ops", type=int, default=300, help="statements per task per run")
    parser.add_argument(
        "--only", nargs="*", choices=sorted(CONTENDERS), help="run only these contenders"
    )
    args = parser.parse_args(argv)
    names = args.only or list(CONTENDERS)
    workloads = ["select", "insert"]
    results: dict[str, dict[str, list[float]]] = {w: {c: [] for c in names} for w in workloads}
    with ExitStack() as stack:
        dsn = args.dsn
        if dsn is None:
            dsn = stack.enter_context(PostgresServer()).dsn
        _prepare(dsn)
        for r in range(args.repeat):
            for workload in workloads:
                order = names if r % 2 == 0 else list(reversed(names))
                for name in order:
                    results[workload][name].append(CONTENDERS[name](dsn, workload, args.ops))
            print(f"repeat {r + 1}/{args.repeat} done", file=sys.stderr)

    peers = ""
    if any(n.startswith(("psycopg_pool", "asyncpg")) for n in names):
        import asyncpg
        import psycopg_pool

        peers = f"psycopg_pool {psycopg_pool.__version__}, asyncpg {asyncpg.__version__}, "
    print(
        f"{TASKS} tasks, {CONNECTIONS} connections, {args.ops} statements per task, "
        f"median of {args.repeat} runs (ops/s); psycopg {psycopg.__version__}, "
        f"{peers}trio {trio.__version__}, Python {sys.version.split()[0]}"
    )
    print()
    header = f"| {'contender':<15} |" + "".join(
        f" {w + ' ops/s':>13} | otpy/x |" for w in workloads
    )
    print(header)
    print("|" + "-" * 17 + "|" + "---------------|--------|" * len(workloads))
    medians = {w: {c: statistics.median(v) for c, v in results[w].items()} for w in workloads}
    for name in names:
        row = f"| {name:<15} |"
        for w in workloads:
            row += f" {medians[w][name]:>13,.0f} | {_paired_ratio(results[w], name):>6.2f} |"
        print(row)
    print()
    print(
        "otpy/x: median over the repeats of otpy's rate divided by x's rate in the same "
        "repeat (paired, so that load changes on the machine between repeats cancel out)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
