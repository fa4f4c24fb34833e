"""Benchmark: otpy's pool against psycopg_pool, asyncpg's pool and a naive trio channel.

Tasks share 8 connections; each task checks a connection out, runs its
workload, and gives it back, ``--ops`` times.  Workloads:

* ``select`` (32 tasks): ``SELECT $1::int`` (``%s`` for psycopg), result fetched;
* ``insert`` (32 tasks): a one-row ``INSERT`` into a small table;
* ``transaction`` (128 tasks): ``BEGIN; SELECT balance ... FOR UPDATE; UPDATE
  ... SET balance = <balance read> + 1; INSERT INTO a log; COMMIT`` on one of
  1000 accounts;
* ``fetch100`` (128 tasks): ``SELECT`` of 100 rows of 5 columns (int, int,
  text, float8, timestamptz), all fetched.

Contenders (each one a fresh event loop per run; connections opened and
warmed up before the clock starts):

* ``otpy``: ``async with pool.connection("bench") as conn: await conn.execute(...)``
  (``pool.transaction("bench")`` for the transaction workload);
* ``otpy query``: ``await pool.query("bench", sql, params)`` (also builds a
  QueryResult; not for the transaction workload);
* ``trio channel``: a trio memory channel holding 8 autocommit TrioConnections
  (receive, execute, send back; ``conn.transaction()`` for transactions): no
  pool logic at all, the limit for this architecture;
* ``psycopg_pool``: ``AsyncConnectionPool`` on asyncio, default settings except
  ``min_size=8`` (so: transactions, hence ``COMMIT`` at the end of each block);
  ``conn.transaction()`` for the transaction workload;
* ``asyncpg``: ``asyncpg.create_pool`` on asyncio, default settings except
  ``min_size=max_size=8`` (so: ``reset()`` on every release);
  ``conn.transaction()`` for the transaction workload;
* for reference, not targets: ``psycopg_pool ac`` (autocommit connections) and
  ``asyncpg noreset`` (a no-op ``reset``), i.e. those pools doing what otpy does.

Every run is checked to have done the whole workload: rows fetched (counted
by the client) and, for ``insert`` and ``transaction``, rows in the tables
afterwards (the balances must add up to the number of transactions: a lost
update would show).  A contender failing a check gets no figure.

Repeats alternate the order of the contenders; the tables show medians of
the rates (ops/s, an op being one checkout: a statement or a whole
transaction) and of the per-op 99th-percentile latency (checkout to check-in,
waiting for a connection included), and, per contender, the median over the
repeats of otpy's rate divided by its rate in the same repeat (a paired
ratio: the machine's load drifts between repeats, and pairing cancels most of
it).  Usage::

    .venv/bin/python benchmarks/pool.py                 # own throw-away server
    .venv/bin/python benchmarks/pool.py --dsn "host=... dbname=..." --repeat 7
    .venv/bin/python benchmarks/pool.py --workloads transaction fetch100
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otpy.pg import pool as otpy_pool
from otpy.pg.config import DatabaseConfig, PoolConfig, Secret
from otpy.pg.connection import TrioConnection
from otpy.pg.testing import PostgresServer

CONNECTIONS = 8
TASKS = {"select": 32, "insert": 32, "transaction": 128, "fetch100": 128}
DEFAULT_OPS = {"select": 300, "insert": 300, "transaction": 60, "fetch100": 60}
WARMUP_OPS = 10  # per connection, before the clock starts
ACCOUNTS = 1000
ROWS = 10_000

# (psycopg, asyncpg) spellings of each statement.
SELECT = ("SELECT %s::int", "SELECT $1::int")
INSERT = (
    "INSERT INTO bench_items (task, n) VALUES (%s, %s)",
    "INSERT INTO bench_items (task, n) VALUES ($1, $2)",
)
FETCH = (
    "SELECT id, task, label, score, created FROM bench_rows WHERE id >= %s AND id < %s",
    "SELECT id, task, label, score, created FROM bench_rows WHERE id >= $1 AND id < $2",
)
TX_SELECT = (
    "SELECT balance FROM bench_accounts WHERE id = %s FOR UPDATE",
    "SELECT balance FROM bench_accounts WHERE id = $1 FOR UPDATE",
)
TX_UPDATE = (
    "UPDATE bench_accounts SET balance = %s WHERE id = %s",
    "UPDATE bench_accounts SET balance = $1 WHERE id = $2",
)
TX_INSERT = (
    "INSERT INTO bench_log (account, task, n) VALUES (%s, %s, %s)",
    "INSERT INTO bench_log (account, task, n) VALUES ($1, $2, $3)",
)


def _account(task: int, i: int) -> int:
    return (task * 7919 + i * 104729) % ACCOUNTS + 1


def _first_row(task: int, i: int) -> int:
    return (task * 131 + i * 977) % (ROWS - 100) + 1


@dataclass
class Run:
    """One contender's run: its timed ops and what it did in all (warm-up included)."""

    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    rows: int = 0  # rows the client fetched (and checked), warm-up included

    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# --- the work of one op, psycopg flavour (the same API on trio and asyncio) ---------------


async def _pg_select(conn: Any, task: int, i: int) -> int:
    cur = await conn.execute(SELECT[0], (i,))
    return 1 if await cur.fetchone() == (i,) else 0


async def _pg_insert(conn: Any, task: int, i: int) -> int:
    await conn.execute(INSERT[0], (task, i))
    return 0


async def _pg_fetch100(conn: Any, task: int, i: int) -> int:
    first = _first_row(task, i)
    cur = await conn.execute(FETCH[0], (first, first + 100))
    return len(await cur.fetchall())


async def _pg_transaction_body(conn: Any, task: int, i: int) -> int:
    """The statements of one transaction (the caller opens and closes it)."""
    account = _account(task, i)
    cur = await conn.execute(TX_SELECT[0], (account,))
    row = await cur.fetchone()
    await conn.execute(TX_UPDATE[0], (row[0] + 1, account))
    await conn.execute(TX_INSERT[0], (account, task, i))
    return 0


async def _pg_transaction(conn: Any, task: int, i: int) -> int:
    async with conn.transaction():
        return await _pg_transaction_body(conn, task, i)


PG_OPS: dict[str, Callable[[Any, int, int], Any]] = {
    "select": _pg_select,
    "insert": _pg_insert,
    "fetch100": _pg_fetch100,
    "transaction": _pg_transaction,
}


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


async def _run_trio(workload: str, ops: int, op: Callable[[int, int], Any]) -> Run:
    """Warm up (one task per connection), then time ``TASKS`` tasks doing ``ops`` ops each."""
    run = Run()
    perf_counter = time.perf_counter
    latencies = run.latencies

    async def warm(task: int) -> None:
        for i in range(WARMUP_OPS):
            rows = await op(task, i)  # not `run.rows += await ...`: tasks interleave
            run.rows += rows

    async def body(task: int) -> None:
        rows = 0
        for i in range(ops):
            t0 = perf_counter()
            rows += await op(task, i)
            latencies.append(perf_counter() - t0)
        run.rows += rows

    async with trio.open_nursery() as nursery:
        for task in range(CONNECTIONS):
            nursery.start_soon(warm, task)
    start = perf_counter()
    async with trio.open_nursery() as nursery:
        for task in range(TASKS[workload]):
            nursery.start_soon(body, task)
    run.elapsed = perf_counter() - start
    return run


async def _otpy(dsn: str, workload: str, ops: int, use_query: bool, timing: bool = True) -> Run:
    config = PoolConfig(name="bench", database="bench", min_size=CONNECTIONS, max_size=CONNECTIONS)
    async with otpy_pool.open_pool("bench", config, _database(dsn), timing=timing):
        connection = otpy_pool.connection
        transaction = otpy_pool.transaction
        query = otpy_pool.query
        pg_op = PG_OPS[workload]

        async def with_connection(task: int, i: int) -> int:
            async with connection("bench") as conn:
                return await pg_op(conn, task, i)  # type: ignore[no-any-return]

        async def in_transaction(task: int, i: int) -> int:
            async with transaction("bench") as conn:
                return await _pg_transaction_body(conn, task, i)

        async def with_query(task: int, i: int) -> int:
            if workload == "select":
                return 1 if (await query("bench", SELECT[0], (i,))).rows == [(i,)] else 0
            if workload == "insert":
                await query("bench", INSERT[0], (task, i))
                return 0
            first = _first_row(task, i)
            return len((await query("bench", FETCH[0], (first, first + 100))).rows)

        if use_query:
            op = with_query
        else:
            op = in_transaction if workload == "transaction" else with_connection
        return await _run_trio(workload, ops, op)


async def _trio_channel(dsn: str, workload: str, ops: int) -> Run:
    send, receive = trio.open_memory_channel[TrioConnection[Any]](CONNECTIONS)
    conns = [await TrioConnection.connect(dsn, autocommit=True) for _ in range(CONNECTIONS)]
    for conn in conns:
        send.send_nowait(conn)
    pg_op = PG_OPS[workload]
    try:

        async def op(task: int, i: int) -> int:
            conn = await receive.receive()
            try:
                return await pg_op(conn, task, i)  # type: ignore[no-any-return]
            finally:
                send.send_nowait(conn)

        return await _run_trio(workload, ops, op)
    finally:
        for conn in conns:
            await conn.close()


# --- asyncio contenders ---------------------------------------------------------------


async def _run_asyncio(workload: str, ops: int, op: Callable[[int, int], Any]) -> Run:
    """:func:`_run_trio` on asyncio."""
    run = Run()
    perf_counter = time.perf_counter
    latencies = run.latencies

    async def warm(task: int) -> None:
        for i in range(WARMUP_OPS):
            rows = await op(task, i)  # not `run.rows += await ...`: tasks interleave
            run.rows += rows

    async def body(task: int) -> None:
        rows = 0
        for i in range(ops):
            t0 = perf_counter()
            rows += await op(task, i)
            latencies.append(perf_counter() - t0)
        run.rows += rows

    await asyncio.gather(*(warm(task) for task in range(CONNECTIONS)))
    start = perf_counter()
    await asyncio.gather(*(body(task) for task in range(TASKS[workload])))
    run.elapsed = perf_counter() - start
    return run


async def _psycopg_pool(dsn: str, workload: str, ops: int, autocommit: bool = False) -> Run:
    from psycopg_pool import AsyncConnectionPool

    kwargs = {"autocommit": True} if autocommit else None
    pg_op = PG_OPS[workload]
    async with AsyncConnectionPool(dsn, min_size=CONNECTIONS, open=False, kwargs=kwargs) as pool:
        await pool.wait()

        async def op(task: int, i: int) -> int:
            async with pool.connection() as conn:
                return await pg_op(conn, task, i)  # type: ignore[no-any-return]

        return await _run_asyncio(workload, ops, op)


async def _no_reset(conn: Any) -> None:
    pass


async def _asyncpg(dsn: str, workload: str, ops: int, reset: bool = True) -> Run:
    import asyncpg

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

        async def select(task: int, i: int) -> int:
            async with pool.acquire() as conn:
                return 1 if await conn.fetchval(SELECT[1], i) == i else 0

        async def insert(task: int, i: int) -> int:
            async with pool.acquire() as conn:
                await conn.execute(INSERT[1], task, i)
                return 0

        async def fetch100(task: int, i: int) -> int:
            first = _first_row(task, i)
            async with pool.acquire() as conn:
                return len(await conn.fetch(FETCH[1], first, first + 100))

        async def transaction(task: int, i: int) -> int:
            account = _account(task, i)
            async with pool.acquire() as conn, conn.transaction():
                balance = await conn.fetchval(TX_SELECT[1], account)
                await conn.execute(TX_UPDATE[1], balance + 1, account)
                await conn.execute(TX_INSERT[1], account, task, i)
                return 0

        ops_by_workload = {
            "select": select,
            "insert": insert,
            "fetch100": fetch100,
            "transaction": transaction,
        }
        return await _run_asyncio(workload, ops, ops_by_workload[workload])
    finally:
        await pool.close()


CONTENDERS: dict[str, Callable[[str, str, int], Run]] = {
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

#: Contenders that cannot run a workload (``query()`` is one statement, not a transaction).
UNSUPPORTED = {("otpy query", "transaction")}


def _prepare(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_items, bench_rows, bench_accounts, bench_log")
        conn.execute("CREATE TABLE bench_items (id bigserial PRIMARY KEY, task int, n int)")
        conn.execute(
            "CREATE TABLE bench_rows (id int PRIMARY KEY, task int, label text, "
            "score float8, created timestamptz)"
        )
        conn.execute(
            "INSERT INTO bench_rows SELECT g, g %% 128, 'row number ' || g, g / 7.0, "
            "'2026-01-01'::timestamptz + g * interval '1 minute' "
            "FROM generate_series(1, %s) AS g",
            (ROWS,),
        )
        conn.execute("CREATE TABLE bench_accounts (id int PRIMARY KEY, balance bigint NOT NULL)")
        conn.execute(
            "INSERT INTO bench_accounts SELECT g, 0 FROM generate_series(1, %s) AS g", (ACCOUNTS,)
        )
        conn.execute(
            "CREATE TABLE bench_log (id bigserial PRIMARY KEY, account int, task int, n int)"
        )
        conn.execute("VACUUM ANALYZE bench_rows, bench_accounts")


def _reset(dsn: str, workload: str) -> None:
    """Empty what the previous run wrote, so that this run's work can be counted."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if workload == "insert":
            conn.execute("TRUNCATE bench_items")
        elif workload == "transaction":
            conn.execute("TRUNCATE bench_log")
            conn.execute("UPDATE bench_accounts SET balance = 0")
            conn.execute("VACUUM bench_accounts")


def _check(dsn: str, workload: str, ops: int, run: Run) -> str | None:
    """Return what the run failed to do, or None if it did its whole workload."""
    total = TASKS[workload] * ops + CONNECTIONS * WARMUP_OPS
    if len(run.latencies) != TASKS[workload] * ops:
        return f"{len(run.latencies)} timed ops, expected {TASKS[workload] * ops}"
    expected_rows = {"select": total, "fetch100": 100 * total}.get(workload, 0)
    if run.rows != expected_rows:
        return f"fetched {run.rows} rows (right values), expected {expected_rows}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        if workload == "insert":
            (count,) = conn.execute("SELECT count(*) FROM bench_items").fetchone() or (0,)
            if count != total:
                return f"{count} rows inserted, expected {total}"
        elif workload == "transaction":
            row = conn.execute(
                "SELECT (SELECT count(*) FROM bench_log), (SELECT sum(balance) FROM bench_accounts)"
            ).fetchone()
            if row != (total, total):
                return f"log rows, sum of balances = {row}, expected {total} each"
    return None


def _paired_ratio(results: dict[str, list[Run]], name: str) -> float:
    if not results.get("otpy") or not results.get(name):
        return float("nan")
    return statistics.median(
        o.rate() / x.rate() for o, x in zip(results["otpy"], results[name], strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="server to use (default: start a throw-away one)")
    parser.add_argument("--repeat", type=int, default=5, help="repeats; medians are shown")
    parser.add_argument("--ops", type=int, help=f"ops per task per run (default: {DEFAULT_OPS})")
    parser.add_argument(
        "--workloads", nargs="*", choices=list(TASKS), help="run only these workloads"
    )
    parser.add_argument(
        "--only", nargs="*", choices=sorted(CONTENDERS), help="run only these contenders"
    )
    args = parser.parse_args(argv)
    names = args.only or list(CONTENDERS)
    workloads = args.workloads or list(TASKS)
    ops = {w: args.ops or DEFAULT_OPS[w] for w in workloads}
    results: dict[str, dict[str, list[Run]]] = {w: {c: [] for c in names} for w in workloads}
    failures: dict[tuple[str, str], str] = {}
    with ExitStack() as stack:
        dsn = args.dsn
        if dsn is None:
            dsn = stack.enter_context(PostgresServer()).dsn
        _prepare(dsn)
        for r in range(args.repeat):
            for workload in workloads:
                order = names if r % 2 == 0 else list(reversed(names))
                for name in order:
                    if (name, workload) in UNSUPPORTED:
                        continue
                    _reset(dsn, workload)
                    run = CONTENDERS[name](dsn, workload, ops[workload])
                    problem = _check(dsn, workload, ops[workload], run)
                    if problem is not None:
                        failures.setdefault((name, workload), problem)
                        print(f"{name} / {workload}: FAILED: {problem}", file=sys.stderr)
                    results[workload][name].append(run)
            print(f"repeat {r + 1}/{args.repeat} done", file=sys.stderr)

    peers = ""
    if any(n.startswith(("psycopg_pool", "asyncpg")) for n in names):
        import asyncpg
        import psycopg_pool

        peers = f"psycopg_pool {psycopg_pool.__version__}, asyncpg {asyncpg.__version__}, "
    print(
        f"{CONNECTIONS} connections, median of {args.repeat} runs; psycopg {psycopg.__version__}, "
        f"{peers}trio {trio.__version__}, Python {sys.version.split()[0]}"
    )
    for w in workloads:
        print()
        print(f"{w}: {TASKS[w]} tasks, {ops[w]} ops per task")
        print()
        print(f"| {'contender':<15} | {'ops/s':>9} | otpy/x | p99 ms |")
        print("|-----------------|-----------|--------|--------|")
        for name in names:
            runs = results[w][name]
            if (name, w) in UNSUPPORTED:
                continue
            if (name, w) in failures:
                print(f"| {name:<15} | FAILED: {failures[name, w]} |")
                continue
            rate = statistics.median(run.rate() for run in runs)
            p99 = statistics.median(run.p99() for run in runs) * 1000
            print(
                f"| {name:<15} | {rate:>9,.0f} | {_paired_ratio(results[w], name):>6.2f} "
                f"| {p99:>6.2f} |"
            )
    print()
    print(
        "otpy/x: median over the repeats of otpy's rate divided by x's rate in the same "
        "repeat (paired, so that load changes on the machine between repeats cancel out); "
        "p99: median over the repeats of each run's 99th-percentile op latency"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
