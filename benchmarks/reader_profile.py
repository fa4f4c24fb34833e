"""Where the WAL reader's CPU goes per row: the decode path on captured pgoutput bytes.

``benchmarks/replication_wide.py`` measures the whole reader against
pg_recvlogical; this script splits the client's share of it, without sockets,
on the same rows: the 14-column table of the wide benchmark (and the
5-column one of ``replication.py``), inserted in one transaction, captured
with ``pg_logical_slot_peek_binary_changes`` in text and binary format, then
fed through the reader's steps as ``ReplicationSession.read_loop`` does:

* ``pgoutput``: XLogData header + :func:`decode_message` (compiled or not);
* ``+ feed``: :class:`TransactionAssembler` (values loaded by
  :class:`ValueDecoder`, :class:`Change` built, chunks of 500);
* ``+ handler``: every value of every change read, batch dropped.

Each stage is timed with the garbage collector off and on (the difference is
what the collector costs at this allocation pattern), then the load time of
each column's value alone (``timeit`` on one value: a lower bound, caches
warm).  Medians of ``--repeat`` passes, in microseconds per row.

Usage::

    .venv/bin/python benchmarks/reader_profile.py [--rows 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import struct
import sys
import time
import timeit
from pathlib import Path
from typing import Any

import psycopg
from psycopg.pq import Format
from psycopg.types.enum import EnumInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replication import ROW as ROW5
from replication import TABLE as TABLE5
from replication_wide import ROW, SETUP

from otpy.pg.replication import LSN, ValueDecoder
from otpy.pg.replication.changes import TransactionAssembler
from otpy.pg.replication.pgoutput import Insert, decode_message, is_compiled
from otpy.pg.testing import PostgresServer

_XLOG = struct.Struct(">QQq")


def capture(dsn: str, rows: int) -> tuple[dict[str, list[bytes]], EnumInfo]:
    """XLogData frames ('w' + header + pgoutput) of both tables, text and binary."""
    out: dict[str, list[bytes]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in [*SETUP, TABLE5]:
            conn.execute(statement)
        info = EnumInfo.fetch(conn, "mood")
        assert info is not None
        for label, table, row in (("wide", "wide", ROW), ("5 columns", "bench", ROW5)):
            slot, pub = f"profile_{table}", f"profile_{table}_pub"
            conn.execute(f"CREATE PUBLICATION {pub} FOR TABLE {table}")
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])
            conn.execute(f"INSERT INTO {table} SELECT {row} FROM generate_series(1, {rows}) g")
            conn.execute("CHECKPOINT")
            for fmt in ("text", "binary"):
                options = ["proto_version", "1", "publication_names", pub]
                if fmt == "binary":
                    options += ["binary", "true"]
                marks = ", ".join(["%s"] * len(options))
                peek = (
                    f"SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, {marks})"
                )
                cur = conn.execute(peek, [slot, *options])
                out[f"{label}, {fmt}"] = [
                    b"w" + _XLOG.pack(i, i, 0) + bytes(r[0]) for i, r in enumerate(cur)
                ]
    return out, info


def new_decoder(info: EnumInfo) -> ValueDecoder:
    decoder = ValueDecoder()
    decoder.register_type(info)
    return decoder


def run(frames: list[bytes], info: EnumInfo, stage: int) -> float:
    """Seconds to take ``frames`` through ``stage`` (0 pgoutput, 1 + feed, 2 + handler)."""
    assembler = TransactionAssembler(new_decoder(info), 500)
    unpack, feed, new_lsn = _XLOG.unpack_from, assembler.feed, int.__new__
    start = time.perf_counter()
    for data in frames:
        begin, _end, _time = unpack(data, 1)
        msg = decode_message(data[25:])
        if stage == 0:
            continue
        batches = feed(new_lsn(LSN, begin), msg)
        if stage == 2:
            for batch in batches:
                for change in batch:
                    if change.data is not None:
                        for _value in change.data.values():
                            pass
        del batches
    return time.perf_counter() - start


def per_column(frames: list[bytes], info: EnumInfo, binary: bool) -> list[tuple[str, float, str]]:
    """(column, us to load its value of one row, Python type) with the reader's loaders."""
    decoder = new_decoder(info)
    assembler = TransactionAssembler(decoder, None)
    insert = None
    for i, data in enumerate(frames):
        msg = decode_message(data[25:])
        assembler.feed(LSN(i), msg)
        if type(msg) is Insert:
            insert = msg
    assert insert is not None
    relation = decoder.relation(insert.relation_oid)
    fmt = Format.BINARY if binary else Format.TEXT
    out = []
    for column, value in zip(relation.columns, insert.new.values, strict=True):
        load = decoder._load_function(column.type_oid, fmt)
        n = 20000
        best = min(timeit.repeat(lambda: load(value), number=n, repeat=5)) / n * 1e6  # noqa: B023
        out.append((column.name, best, type(load(value)).__name__))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with PostgresServer() as server:
        streams, info = capture(server.dsn, args.rows)
    print(f"per row, us (medians of {args.repeat}; compiled decoder: {is_compiled()})")
    print(f"{'stream':20} {'pgoutput':>15} {'+ feed':>15} {'+ handler':>15}   (GC off / on)")
    for label, frames in streams.items():
        rows = sum(1 for f in frames if f[25:26] == b"I")
        cells = []
        for stage in (0, 1, 2):
            pair = []
            for collect in (False, True):
                gc.enable() if collect else gc.disable()
                times = [run(frames, info, stage) for _ in range(args.repeat)]
                pair.append(statistics.median(times) / rows * 1e6)
            gc.enable()
            cells.append(f"{pair[0]:6.2f} / {pair[1]:5.2f}")
        print(f"{label:20} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15}")
    for label in ("wide, text", "wide, binary"):
        columns: list[Any] = per_column(streams[label], info, label.endswith("binary"))
        print(f"\n{label}: one value's load, us (sum {sum(c[1] for c in columns):.2f})")
        for name, cost, kind in columns:
            print(f"  {name:10} {cost:5.2f}  {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
