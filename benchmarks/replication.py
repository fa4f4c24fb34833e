"""Benchmark: the otpy WAL reader vs pg_recvlogical and vs psycopg2 + pypgoutput.

Workloads on a 5-column table (int key, int, text, float8, timestamptz),
pgoutput protocol 1, text values:

* ``200k-row txn``: one transaction inserting 200 000 rows;
* ``10k small txns``: 10 000 transactions of one row each.

For each repeat, one persistent slot per consumer is created, the workload is
committed once, and each consumer then streams its slot from the start to the
end of the workload (catch-up throughput, server decoding included):

* ``pg_recvlogical`` writing to a file, up to ``--endpos``
  ``pg_current_wal_insert_lsn()`` taken after the workload: the limit, it
  does not decode;
* ``otpy``: ``wal_reader.subscribe`` with a handler that reads every value
  of every row: frames, pgoutput, values decoded by psycopg loaders,
  ``Change`` values, handler calls, acks;
* ``psycopg2+pypgoutput``: LogicalReplicationConnection + pypgoutput's decoders
  building ``{column: text}`` rows (no type conversion), in
  ``benchmarks/.venvs/peer`` (created on first use with pip; skipped if that fails).

Every consumer reports the rows it saw (pg_recvlogical's file is parsed
after the run): a run that missed rows is reported and left out of the table.
``benchmarks/replication_wide.py`` runs the same comparison on a 14-column
table of common types.

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
import gc
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
from otpy.pg.replication import pgoutput  # noqa: E402
from otpy.pg.testing import PostgresServer, find_bindir  # noqa: E402

PEER_VENV = ROOT / "benchmarks" / ".venvs" / "peer"
PEER_SCRIPT = ROOT / "benchmarks" / "replication_peer.py"
CHILD_SCRIPT = ROOT / "benchmarks" / "replication_child.py"
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
    """Counts rows and reads nothing of them (values decoded on demand stay undecoded)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.rows = 0
        self.done = trio.Event()

    async def handle_replication_data(self, ref: Any, changes: Any) -> None:
        self.rows += len(changes)
        if self.rows >= self.expected:
            self.done.set()


class ReadKey(NoOp):
    """Reads the key column ``id`` of every row."""

    async def handle_replication_data(self, ref: Any, changes: Any) -> None:
        for change in changes:
            if change.data is not None:
                change.data["id"]
        await super().handle_replication_data(ref, changes)


class ReadAll(NoOp):
    """Reads every value of every row (what a handler copying rows elsewhere does)."""

    async def handle_replication_data(self, ref: Any, changes: Any) -> None:
        for change in changes:
            if change.data is not None:  # not a TRUNCATE
                for _value in change.data.values():
                    pass
        await super().handle_replication_data(ref, changes)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_otpy(
    dsn: str,
    slot: str,
    rows: int,
    options: dict[str, Any],
    handler_class: type[NoOp] = ReadAll,
    publication: str = PUB,
    freeze: bool = False,
) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, rows handled) to stream ``rows`` rows.

    ``freeze``: ``gc.freeze()`` first, as docs/operations.md advises an
    application to do after start-up (undone after the run).
    """
    if freeze:
        gc.freeze()
    try:
        return _run_otpy(dsn, slot, rows, options, handler_class, publication)
    finally:
        if freeze:
            gc.unfreeze()


def _run_otpy(
    dsn: str,
    slot: str,
    rows: int,
    options: dict[str, Any],
    handler_class: type[NoOp],
    publication: str,
) -> tuple[float, float, int]:
    cpu = time.process_time()
    handler = handler_class(rows)

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            await start_actor(nursery, DynamicSupervisor(), name=wal_reader.READERS_SUPERVISOR)
            start = time.perf_counter()
            ref = await wal_reader.subscribe(
                handler, dsn, slot, [publication], {"slot_type": "persistent", **options}
            )
            await handler.done.wait()
            elapsed = time.perf_counter() - start
            await wal_reader.unsubscribe(ref)
            nursery.cancel_scope.cancel()
        return elapsed

    elapsed = trio.run(main)
    return elapsed, time.process_time() - cpu, handler.rows


def count_recvlogical_rows(path: Path) -> int:
    """Rows (Insert messages) in a pg_recvlogical output file of pgoutput messages.

    pg_recvlogical writes each message followed by a newline; pgoutput
    messages are self-delimiting, so the file is walked message by message
    (Begin, Commit, Origin, Relation, Type, Insert: what the workloads produce).
    """
    data = path.read_bytes()
    pos = rows = 0
    n = len(data)
    while pos < n:
        kind = data[pos]
        if kind == 0x42:  # Begin
            end = pos + 21
        elif kind == 0x43:  # Commit
            end = pos + 26
        elif kind == 0x49:  # Insert: oid, 'N', tuple
            _, end = pgoutput._tuple(data, pos + 6)
            rows += 1
        elif kind == 0x4F:  # Origin
            _, end = pgoutput._string(data, pos + 9)
        elif kind in (0x52, 0x59):  # Relation, Type
            _, end = pgoutput._string(data, pos + 5)
            _, end = pgoutput._string(data, end)
            if kind == 0x52:
                ncols = int.from_bytes(data[end + 1 : end + 3])
                end += 3
                for _ in range(ncols):
                    _, end = pgoutput._string(data, end + 1)
                    end += 8
        else:
            raise ValueError(f"unexpected pgoutput message {chr(kind)!r} at {pos}")
        if data[end : end + 1] != b"\n":
            raise ValueError(f"pg_recvlogical output out of step at {end}")
        pos = end + 1
    return rows


def run_recvlogical(
    dsn: str, slot: str, endpos: str, *, binary: bool = False, publication: str = PUB
) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, rows received) of pg_recvlogical writing to a file.

    ``endpos`` must be ``pg_current_wal_insert_lsn()`` taken after the
    workload: pg_recvlogical stops there, and the rows in its file are counted.
    """
    options = ["-o", "proto_version=1", "-o", f"publication_names={publication}"]
    if binary:
        options += ["-o", "binary=true"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "changes.out"
        command = [str(find_bindir() / "pg_recvlogical"), "-d", dsn, "--slot", slot]
        command += ["--start", "--plugin=pgoutput", *options, "-E", endpos, "-f", str(out)]
        cpu = children_cpu()
        start = time.perf_counter()
        subprocess.run([*command, "--no-loop"], check=True)
        elapsed, used = time.perf_counter() - start, children_cpu() - cpu
        return elapsed, used, count_recvlogical_rows(out)


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


def run_peer(
    python: Path, dsn: str, slot: str, rows: int, publication: str = PUB
) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, rows handled) of the psycopg2 + pypgoutput peer."""
    cpu = children_cpu()
    out = subprocess.run(
        [str(python), str(PEER_SCRIPT), dsn, slot, publication, str(rows)],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds, seen = out.stdout.split()
    return float(seconds), children_cpu() - cpu, int(seen)


def run_baseline(
    python: Path, dsn: str, slot: str, rows: int, publication: str, binary: bool, read: str
) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, rows handled) of the otpy that ``python`` imports.

    For before/after comparisons in one run: install another commit in a
    virtualenv and pass its interpreter as ``--baseline``.
    """
    flag = "1" if binary else "0"
    out = subprocess.run(
        [str(python), str(CHILD_SCRIPT), dsn, slot, publication, str(rows), flag, read],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds, cpu, seen = out.stdout.split()
    return float(seconds), float(cpu), int(seen)


#: A consumer: (dsn, slot, expected rows, end LSN) -> (seconds, CPU seconds, rows seen).
Consumer = Callable[[str, str, int, str], tuple[float, float, int]]


def consumers(
    publication: str, *, recvlogical_binary: bool = False, baseline: Path | None = None
) -> dict[str, Consumer]:
    """The contenders of the 5-column benchmark (the handler reads every value).

    With ``baseline`` (another interpreter with otpy installed), also that
    otpy, text and binary, as ``otpy baseline`` / ``otpy baseline binary``.
    """
    out: dict[str, Consumer] = {
        "pg_recvlogical": lambda dsn, slot, rows, end: run_recvlogical(
            dsn, slot, end, publication=publication
        ),
    }
    if recvlogical_binary:
        out["pg_recvlogical binary"] = lambda dsn, slot, rows, end: run_recvlogical(
            dsn, slot, end, binary=True, publication=publication
        )
    out["otpy"] = lambda dsn, slot, rows, end: run_otpy(
        dsn, slot, rows, {}, publication=publication
    )
    out["otpy binary"] = lambda dsn, slot, rows, end: run_otpy(
        dsn, slot, rows, {"binary": True}, publication=publication
    )
    if baseline is not None:
        for binary in (False, True):
            out["otpy baseline" + (" binary" if binary else "")] = (
                lambda dsn, slot, rows, end, binary=binary: run_baseline(
                    baseline, dsn, slot, rows, publication, binary, "all"
                )
            )
    python = peer_python()
    if python is not None:
        out["psycopg2+pypgoutput"] = lambda dsn, slot, rows, end: run_peer(
            python, dsn, slot, rows, publication
        )
    return out


Result = tuple[str, str, float, float]


def throughput(
    dsn: str,
    repeat: int,
    workloads: dict[str, tuple[str, int]],
    contenders: dict[str, Consumer],
    table: str = "bench",
) -> list[Result]:
    """(workload, consumer, wall seconds, client CPU seconds) for every complete run.

    Consumers run one after another in an order rotated at every repeat (the
    machine is shared: interleaving spreads its noise over all of them).  A
    run that did not see every row of the workload is reported and dropped.
    """
    results: list[Result] = []
    names = list(contenders)
    for name, (statement, rows) in workloads.items():
        for rep in range(repeat):
            sql(dsn, f"TRUNCATE {table}")
            slots = {c: f"bench_{i}" for i, c in enumerate(names)}
            for slot in slots.values():
                sql(dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
            try:
                sql(dsn, statement)
                endpos = sql(dsn, "SELECT pg_current_wal_insert_lsn()::text")[0][0]
                sql(dsn, "CHECKPOINT")
                order = names[rep % len(names) :] + names[: rep % len(names)]
                for consumer in order:
                    seconds, cpu, seen = contenders[consumer](dsn, slots[consumer], rows, endpos)
                    complete = seen == rows
                    if complete:
                        results.append((name, consumer, seconds, cpu))
                    print(
                        f"  {name:22} {consumer:26} {seconds:8.3f} s  cpu {cpu:.3f} s"
                        + ("" if complete else f"  INCOMPLETE: {seen} of {rows} rows, dropped"),
                        file=sys.stderr,
                    )
            finally:
                for slot in slots.values():
                    sql(dsn, f"SELECT pg_drop_replication_slot('{slot}')")
    return results


def print_versus(
    results: list[Result], workloads: dict[str, tuple[str, int]], pairs: list[tuple[str, str]]
) -> None:
    """For each workload and (ours, theirs) pair: median wall and CPU ratios, theirs / ours."""
    for name in workloads:
        for ours, theirs in pairs:
            wall = {
                c: [r[2] for r in results if r[0] == name and r[1] == c] for c in (ours, theirs)
            }
            cpu = {c: [r[3] for r in results if r[0] == name and r[1] == c] for c in (ours, theirs)}
            if all(wall.values()):
                print(
                    f"{name:22} {ours} vs {theirs}: "
                    f"{statistics.median(wall[theirs]) / statistics.median(wall[ours]):.2f}x wall,"
                    f" {statistics.median(cpu[theirs]) / statistics.median(cpu[ours]):.2f}x CPU"
                )


def print_table(
    results: list[Result],
    workloads: dict[str, tuple[str, int]],
    baselines: dict[str, str] | None = None,
    peer: tuple[str, str] | None = ("otpy", "psycopg2+pypgoutput"),
) -> None:
    """Medians per (workload, consumer) and ratios to pg_recvlogical.

    ``baselines`` maps a consumer to the pg_recvlogical run it is compared
    with (e.g. binary consumers to ``pg_recvlogical binary``); others are
    compared with ``pg_recvlogical``.  A consumer with no complete run is not
    printed.
    """
    baselines = baselines or {}
    print(
        f"{'workload':22} {'consumer':26} {'seconds':>8} {'rows/s':>10} {'vs recvlogical':>15}"
        f" {'client CPU s':>13} {'runs':>5}"
    )
    for name, (_, rows) in workloads.items():
        consumers = dict.fromkeys(r[1] for r in results if r[0] == name)
        runs = {c: [r for r in results if r[0] == name and r[1] == c] for c in consumers}
        med = {c: statistics.median(r[2] for r in runs[c]) for c in consumers}
        cpu = {c: statistics.median(r[3] for r in runs[c]) for c in consumers}
        for consumer, seconds in med.items():
            base = med.get(baselines.get(consumer, "pg_recvlogical"))
            ratio = f"{base / seconds:14.2f}x" if base else f"{'-':>15}"
            print(
                f"{name:22} {consumer:26} {seconds:8.3f} {rows / seconds:10,.0f} {ratio}"
                f" {cpu[consumer]:13.3f} {len(runs[consumer]):5}"
            )
        if peer is not None and peer[0] in med and peer[1] in med:
            ours, theirs = peer
            print(
                f"{'':22} {ours} vs {theirs}: {med[theirs] / med[ours]:.2f}x wall, "
                f"{cpu[theirs] / cpu[ours]:.2f}x client CPU"
            )


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
    run_otpy(dsn, slot, rows, {}, NoOp)
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
    parser.add_argument(
        "--baseline", type=Path, help="python of another otpy install, run side by side"
    )
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
        contenders = consumers(PUB, baseline=args.baseline)
        results = throughput(dsn, args.repeat, WORKLOADS, contenders)
        lat = latency(dsn)
        memory = rss(dsn) if args.rss else None
    print()
    print(f"WAL reader benchmark (medians of {args.repeat}; {os.cpu_count()} CPUs)")
    print_table(results, WORKLOADS)
    if args.baseline:
        print_versus(results, WORKLOADS, [("otpy", "otpy baseline")])
        print_versus(results, WORKLOADS, [("otpy binary", "otpy baseline binary")])
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
