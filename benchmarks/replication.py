"""Benchmark: the otpy WAL reader vs pg_recvlogical and vs psycopg2 + pypgoutput.

Workloads on a 5-column table (int key, int, text, float8, timestamptz),
pgoutput protocol 1, text values:

* ``200k-row txn``: one transaction inserting 200 000 rows;
* ``10k small txns``: 10 000 transactions of one row each.

For each repeat, one persistent slot per consumer is created, the workload is
committed once, and each consumer then streams its slot from the start to the
end of the workload (catch-up throughput, server decoding included):

* ``pg_recvlogical`` to /dev/null (``--endpos``): the limit, it does not decode;
* ``otpy``: ``wal_reader.subscribe`` with a no-op handler: frames, pgoutput,
  values decoded by psycopg loaders, ``Change`` values, handler calls, acks;
* ``psycopg2+pypgoutput``: LogicalReplicationConnection + pypgoutput's decoders
  building ``{column: text}`` rows (no type conversion), in
  ``benchmarks/.venvs/peer`` (created on first use with pip; skipped if that fails).

Also measured: commit -> handler latency at 1000 transactions/s (writer in the
same process, ``synchronous_commit=on`` for the writer), and with ``--rss`` the
peak RSS of a reader process streaming a 1 000 000-row transaction.

Usage::

    .venv/bin/python benchmarks/replication.py            # own throw-away server
    .venv/bin/python benchmarks/replication.py --repeat 5 --rss
    .venv/bin/python benchmarks/replication.py --dsn "host=... dbname=..."
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from otpy import DynamicSupervisor  # noqa: E402
from otpy import start as start_actor  # noqa: E402
from otpy.pg import wal_reader  # noqa: E402
from otpy.pg.connection import TrioConnection  # noqa: E402
from otpy.testing import PostgresServer, find_bindir  # noqa: E402

PEER_VENV = ROOT / "benchmarks" / ".venvs" / "peer"
PEER_SCRIPT = ROOT / "benchmarks" / "replication_peer.py"
PUB = "bench_pub"
TABLE = """CREATE TABLE IF NOT EXISTS bench (
    id int PRIMARY KEY, a int, b text, c float8, d timestamptz)"""
ROW = "g, g * 7, 'row number ' || g, g / 3.0, now()"
WORKLOADS = {
    "200k-row txn": (f"INSERT INTO bench SELECT {ROW} FROM generate_series(1, 200000) g", 200_000),
    "10k small txns": (
        "DO $$ BEGIN FOR g IN 1..10000 LOOP "
        f"INSERT INTO bench SELECT {ROW}; COMMIT; END LOOP; END $$",
        10_000,
    ),
}


def sql(dsn: str, *statements: str) -> list[Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows: list[Any] = []
        for statement in statements:
            cur = conn.execute(statement)  # type: ignore[call-overload]
            rows = cur.fetchall() if cur.description else []
        return rows


class NoOp(wal_reader.ReplicationHandler):
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.rows = 0
        self.done = trio.Event()

    async def handle_replication_data(self, ref: Any, changes: Any) -> None:
        self.rows += len(changes)
        if self.rows >= self.expected:
            self.done.set()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_otpy(dsn: str, slot: str, rows: int, options: dict[str, Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to stream ``rows`` rows."""
    cpu = time.process_time()

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            await start_actor(nursery, DynamicSupervisor(), name=wal_reader.READERS_SUPERVISOR)
            handler = NoOp(rows)
            start = time.perf_counter()
            ref = await wal_reader.subscribe(
                handler, dsn, slot, [PUB], {"slot_type": "persistent", **options}
            )
            await handler.done.wait()
            elapsed = time.perf_counter() - start
            await wal_reader.unsubscribe(ref)
            nursery.cancel_scope.cancel()
        return elapsed

    elapsed = trio.run(main)
    return elapsed, time.process_time() - cpu


def run_recvlogical(dsn: str, slot: str, endpos: str) -> tuple[float, float]:
    binary = find_bindir() / "pg_recvlogical"
    cpu = children_cpu()
    start = time.perf_counter()
    subprocess.run(
        [
            str(binary),
            "-d",
            dsn,
            "--slot",
            slot,
            "--start",
            "--plugin=pgoutput",
            "-o",
            "proto_version=1",
            "-o",
            f"publication_names={PUB}",
            "-E",
            endpos,
            "-f",
            "/dev/null",
            "--no-loop",
        ],
        check=True,
    )
    return time.perf_counter() - start, children_cpu() - cpu


def peer_python() -> Path | None:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "psycopg2-binary", "pypgoutput"],
                check=True,
            )
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"psycopg2 peer unavailable: {exc}", file=sys.stderr)
            return None
    return python


def run_peer(python: Path, dsn: str, slot: str, rows: int) -> tuple[float, float]:
    cpu = children_cpu()
    out = subprocess.run(
        [str(python), str(PEER_SCRIPT), dsn, slot, PUB, str(rows)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip()), children_cpu() - cpu


def throughput(dsn: str, repeat: int) -> list[tuple[str, str, float, float]]:
    """(workload, consumer, wall seconds, client CPU seconds) for every run."""
    python = peer_python()
    results: list[tuple[str, str, float, float]] = []
    for name, (statement, rows) in WORKLOADS.items():
        for rep in range(repeat):
            sql(dsn, "TRUNCATE bench")
            consumers = ["pg_recvlogical", "otpy", "otpy binary"]
            if python is not None:
                consumers.append("psycopg2+pypgoutput")
            slots = {c: f"bench_{i}" for i, c in enumerate(consumers)}
            for slot in slots.values():
                sql(dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
            try:
                sql(dsn, statement)
                endpos = sql(dsn, "SELECT pg_current_wal_lsn()::text")[0][0]
                sql(dsn, "CHECKPOINT")
                order = consumers[rep % len(consumers) :] + consumers[: rep % len(consumers)]
                for consumer in order:
                    slot = slots[consumer]
                    if consumer == "pg_recvlogical":
                        seconds, cpu = run_recvlogical(dsn, slot, endpos)
                    elif consumer == "otpy":
                        seconds, cpu = run_otpy(dsn, slot, rows, {})
                    elif consumer == "otpy binary":
                        seconds, cpu = run_otpy(dsn, slot, rows, {"binary": True})
                    else:
                        assert python is not None
                        seconds, cpu = run_peer(python, dsn, slot, rows)
                    results.append((name, consumer, seconds, cpu))
                    print(
                        f"  {name:15} {consumer:20} {seconds:8.3f} s  cpu {cpu:.3f} s",
                        file=sys.stderr,
                    )
            finally:
                for slot in slots.values():
                    sql(dsn, f"SELECT pg_drop_replication_slot('{slot}')")
    return results


def latency(dsn: str, rate: int = 1000, seconds: float = 5.0) -> list[float]:
    """Commit -> handler latencies (ms) of one-row transactions written at ``rate``/s."""
    sql(dsn, "TRUNCATE bench")
    sent: dict[int, float] = {}
    lat: list[float] = []
    total = int(rate * seconds)

    class Timer(wal_reader.ReplicationHandler):
        def __init__(self) -> None:
            self.done = trio.Event()

        async def handle_replication_data(self, ref: Any, changes: Any) -> None:
            now = time.perf_counter()
            for change in changes:
                lat.append((now - sent[change.data["id"]]) * 1000)
            if len(lat) >= total:
                self.done.set()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await start_actor(nursery, DynamicSupervisor(), name=wal_reader.READERS_SUPERVISOR)
            handler = Timer()
            ref = await wal_reader.subscribe(handler, dsn, "bench_latency", [PUB])
            async with await TrioConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute("SET synchronous_commit = on")
                begin = trio.current_time()
                for i in range(1, total + 1):
                    await trio.sleep_until(begin + i / rate)
                    sent[i] = time.perf_counter()
                    await conn.execute("INSERT INTO bench VALUES (%s, 1, 'x', 1.0, now())", [i])
            with trio.fail_after(30):
                await handler.done.wait()
            await wal_reader.unsubscribe(ref)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return lat


def rss_child(dsn: str, slot: str, rows: int) -> None:
    """Stream ``rows`` rows from ``slot`` with a no-op handler; print peak RSS in MB."""
    run_otpy(dsn, slot, rows, {})[0]
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]) / 1024)


def rss(dsn: str, rows: int = 1_000_000) -> tuple[float, float]:
    """(peak RSS MB of a reader through a ``rows``-row transaction, seconds)."""
    sql(dsn, "TRUNCATE bench")
    sql(dsn, "SELECT pg_create_logical_replication_slot('bench_rss', 'pgoutput')")
    try:
        sql(dsn, f"INSERT INTO bench SELECT {ROW} FROM generate_series(1, {rows}) g")
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", dsn, "bench_rss", str(rows)],
            check=True,
            capture_output=True,
            text=True,
        )
        return float(out.stdout.strip()), time.perf_counter() - start
    finally:
        sql(dsn, "SELECT pg_drop_replication_slot('bench_rss')")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="an existing server (default: a throw-away one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rss", action="store_true", help="also measure RSS on 1M rows")
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child[0], args.rss_child[1], int(args.rss_child[2]))
        return 0
    with ExitStack() as stack:
        dsn = args.dsn
        if dsn is None:
            server = stack.enter_context(PostgresServer())
            dsn = server.dsn
        sql(dsn, TABLE)
        if not sql(dsn, f"SELECT 1 FROM pg_publication WHERE pubname = '{PUB}'"):
            sql(dsn, f"CREATE PUBLICATION {PUB} FOR TABLE bench")
        results = throughput(dsn, args.repeat)
        lat = latency(dsn)
        memory = rss(dsn) if args.rss else None
    print()
    print(f"WAL reader benchmark (medians of {args.repeat}; {os.cpu_count()} CPUs)")
    print(
        f"{'workload':16} {'consumer':20} {'seconds':>8} {'rows/s':>10} {'vs recvlogical':>15}"
        f" {'client CPU s':>13}"
    )
    for name, (_, rows) in WORKLOADS.items():
        consumers = dict.fromkeys(r[1] for r in results if r[0] == name)
        med = {
            c: statistics.median(r[2] for r in results if r[0] == name and r[1] == c)
            for c in consumers
        }
        cpu = {
            c: statistics.median(r[3] for r in results if r[0] == name and r[1] == c)
            for c in consumers
        }
        base = med["pg_recvlogical"]
        for consumer, seconds in med.items():
            print(
                f"{name:16} {consumer:20} {seconds:8.3f} {rows / seconds:10,.0f} "
                f"{base / seconds:14.2f}x {cpu[consumer]:13.3f}"
            )
        peer = med.get("psycopg2+pypgoutput")
        if peer is not None:
            print(
                f"{'':16} otpy vs psycopg2+pypgoutput: {peer / med['otpy']:.2f}x wall, "
                f"{cpu['psycopg2+pypgoutput'] / cpu['otpy']:.2f}x client CPU"
            )
    lat.sort()
    p50 = lat[len(lat) // 2]
    p99 = lat[int(len(lat) * 0.99) - 1]
    print(
        f"commit->handler latency at 1000 tx/s: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
        f"max {lat[-1]:.2f} ms ({len(lat)} transactions)"
    )
    if memory is not None:
        print(
            f"reader peak RSS through a 1,000,000-row transaction: {memory[0]:.0f} MB "
            f"({memory[1]:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
