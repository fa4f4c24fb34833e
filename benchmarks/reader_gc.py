"""What Python's garbage collector costs the WAL reader, and what ``gc.freeze()`` saves.

A decoded wide row is nine objects the collector tracks (the ``Change``, its
``dict``, its ``LSN``, jsonb's dict and list, two arrays, a UUID, an address),
and a batch's rows are alive while later rows are decoded: a share of them
survives into the oldest generation, and every few thousand rows CPython runs
a *full* collection, which visits every tracked object of the process: the
application's long-lived heap too.  So the collector's price grows with the
application, not only with the stream.  ``gc.freeze()``, called once the
application has started, moves the objects alive at that moment to a
permanent generation that collections skip (Python >= 3.7).

Each measurement runs in a fresh process: ``--heap`` N long-lived objects
(half dicts, half lists, like an application's data) are allocated, then, in
mode ``freeze``, ``gc.freeze()`` is called, then a reader streams the wide
100k-row transaction of ``benchmarks/replication_wide.py`` (binary, every
value read) from its own slot.  Printed: wall seconds, process CPU,
seconds inside the collector, and full collections.  Modes alternate; medians
of ``--repeat``; every run's row count is checked.

Usage::

    .venv/bin/python benchmarks/reader_gc.py [--repeat 3] [--heap 0 300000 1000000]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROWS = 100_000
MODES = ("default", "freeze")


def child(dsn: str, slot: str, heap: int, mode: str) -> None:
    """One measurement, printed as ``wall cpu gc_seconds full_collections rows``."""
    import trio
    from replication import ReadAll, run_otpy
    from replication_wide import PUB

    ballast: list[Any] = [{"id": i} if i % 2 else [i] for i in range(heap)]
    spent = [0.0, 0.0]
    full = [0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            spent[1] = time.perf_counter()
            return
        spent[0] += time.perf_counter() - spent[1]
        full[0] += info["generation"] == 2

    trio.run(trio.sleep, 0)  # trio's own start-up objects exist before the freeze
    if mode == "freeze":
        gc.freeze()
    gc.callbacks.append(watch)
    wall, cpu, rows = run_otpy(dsn, slot, ROWS, {"binary": True}, ReadAll, publication=PUB)
    gc.callbacks.remove(watch)
    print(f"{wall:.6f} {cpu:.6f} {spent[0]:.6f} {full[0]} {rows} {len(ballast)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="an existing server (default: a throw-away one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--heap", type=int, nargs="*", default=[0, 300_000, 1_000_000])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        dsn, slot, heap, mode = args.child
        child(dsn, slot, int(heap), mode)
        return 0

    from contextlib import ExitStack

    import replication_wide
    from replication import sql

    from otpy.pg.testing import PostgresServer

    pub = replication_wide.PUB
    results: dict[tuple[int, str], list[tuple[float, float, float, int]]] = {}
    with ExitStack() as stack:
        dsn = args.dsn or stack.enter_context(PostgresServer()).dsn
        sql(dsn, *replication_wide.SETUP)
        if not sql(dsn, f"SELECT 1 FROM pg_publication WHERE pubname = '{pub}'"):
            sql(dsn, f"CREATE PUBLICATION {pub} FOR TABLE wide")
        runs = [(h, m, r) for r in range(args.repeat) for h in args.heap for m in MODES]
        slots = [f"bench_gc_{i}" for i in range(len(runs))]
        for slot in slots:
            sql(dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
        sql(
            dsn, f"INSERT INTO wide SELECT {replication_wide.ROW} FROM generate_series(1, {ROWS}) g"
        )
        try:
            for (heap, mode, _), slot in zip(runs, slots, strict=True):
                done = subprocess.run(
                    [sys.executable, __file__, "--child", dsn, slot, str(heap), mode],
                    capture_output=True,
                    text=True,
                )
                if done.returncode:
                    raise RuntimeError(f"{mode} with heap {heap} failed:\n{done.stderr}")
                out = done.stdout.split()
                wall, cpu, in_gc, full, rows = (
                    float(out[0]),
                    float(out[1]),
                    float(out[2]),
                    int(out[3]),
                    int(out[4]),
                )
                if rows != ROWS:
                    raise RuntimeError(f"{mode} with heap {heap} handled {rows} rows, not {ROWS}")
                results.setdefault((heap, mode), []).append((wall, cpu, in_gc, full))
                sql(dsn, f"SELECT pg_drop_replication_slot('{slot}')")
        finally:
            sql(dsn, "TRUNCATE wide")

    print()
    print(
        f"WAL reader, wide 100k-row transaction, binary, every value read "
        f"(medians of {args.repeat}; {os.cpu_count()} CPUs)"
    )
    print(
        f"{'app heap':>10}  {'mode':<8} {'seconds':>8} {'CPU s':>7} {'in GC s':>8} "
        f"{'full GCs':>8}  {'CPU vs default':>14}"
    )
    for heap in args.heap:
        base = statistics.median(r[1] for r in results[(heap, "default")])
        for mode in MODES:
            rs = results[(heap, mode)]
            wall, cpu, in_gc = (statistics.median(r[i] for r in rs) for i in range(3))
            full = statistics.median(r[3] for r in rs)
            print(
                f"{heap:>10,}  {mode:<8} {wall:8.3f} {cpu:7.3f} {in_gc:8.3f} {full:8.0f}  "
                f"{base / cpu:13.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
