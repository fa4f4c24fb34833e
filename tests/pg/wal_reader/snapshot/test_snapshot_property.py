"""Property: snapshot + stream applied to a copy equal the table, whatever the writers do.

A seeded random loop (each seed is one example, reproducible from the test id):
writers insert, update (values and keys) and delete concurrently while a reader
takes the initial snapshot with a random chunk size and parallelism, and, in
some examples, crashes (handler raises) or dies (unsubscribed) mid-snapshot and
starts again.  A handler applies reads and changes to an in-memory copy; once
the writers stopped and a sentinel row arrived, the copy must equal ``SELECT *``.
"""

from __future__ import annotations

import random
from typing import Any

import psycopg
import pytest
import trio
from test_snapshot import Mirror, options, table_rows
from wr_helpers import drop_slot, execute, published_table, unique

from otpy import Ref
from otpy.pg import wal_reader
from otpy.pg.connection import TrioConnection
from otpy.pg.wal_reader import ChangeBatch
from otpy.pg.wal_reader.snapshot import is_snapshot_batch

SENTINEL = 2_000_000_000


async def writer(
    dsn: str,
    table: str,
    rng: random.Random,
    base: int,
    stop: trio.Event,
    limit: int | None = None,
) -> int:
    """Random inserts, updates (of values, of keys, of ranges) and deletes until ``stop``.

    At least 60 statements; at most ``limit`` (a writer that outruns the reader
    in the same process would otherwise keep a watermark waiting forever).
    """
    next_id = base
    ops = 0
    async with await TrioConnection.connect(dsn, autocommit=True) as conn:
        while (not stop.is_set() or ops < 60) and (limit is None or ops < limit):
            some = rng.randint(1, 600)
            kind = rng.random()
            if kind < 0.35:
                statement = f"INSERT INTO {table} VALUES ({next_id}, {rng.randint(0, 99)}, 'w')"
                next_id += 1
            elif kind < 0.6:
                statement = f"UPDATE {table} SET v = v + 1, s = s || 'u' WHERE id = {some}"
            elif kind < 0.7:
                statement = f"UPDATE {table} SET id = {next_id} WHERE id = {some}"
                next_id += 1
            elif kind < 0.8:
                statement = f"UPDATE {table} SET v = -v WHERE id BETWEEN {some} AND {some + 15}"
            else:
                statement = f"DELETE FROM {table} WHERE id = {some}"
            try:
                if rng.random() < 0.2:  # a few statements in one transaction
                    async with conn.transaction():
                        await conn.execute(statement)  # type: ignore[arg-type]
                        await conn.execute(
                            f"DELETE FROM {table} WHERE id = {rng.randint(1, 600)}"  # type: ignore[arg-type]
                        )
                else:
                    await conn.execute(statement)  # type: ignore[arg-type]
            except (psycopg.errors.DeadlockDetected, psycopg.errors.UniqueViolation):
                pass
            ops += 1
    return ops


@pytest.mark.parametrize("seed", range(6))
async def test_snapshot_then_stream_rebuild_the_table_under_concurrent_writers(
    module_dsn: str, readers: Ref, seed: int
) -> None:
    rng = random.Random(seed)
    table = unique("snap_prop")
    pub = published_table(module_dsn, table, "id int PRIMARY KEY, v int, s text")
    await execute(
        module_dsn,
        f"INSERT INTO {table} SELECT g, g % 100, 'r' FROM generate_series(1, "
        f"{rng.randint(50, 3000)}) g",
    )
    mode = ("none", "crash", "die")[seed % 3]
    chunk_size = rng.choice([1, 7, 64, 500, 5000])
    crash_at = rng.randint(0, 3)
    failed = trio.Event()

    async def trouble(batch: ChangeBatch) -> None:
        await trio.lowlevel.checkpoint()  # let the writers interleave with the snapshot
        if (
            mode != "none"
            and is_snapshot_batch(batch)
            and batch.chunk == crash_at
            and not failed.is_set()
        ):
            failed.set()
            if mode == "crash":
                raise RuntimeError("handler crash during the snapshot")
            await trio.sleep_forever()  # "die": unsubscribed while stuck here

    mirror = Mirror(trouble)
    slot = unique("snap_prop")
    opts = options(
        snapshot="initial",
        snapshot_chunk_size=chunk_size,
        snapshot_parallelism=rng.randint(1, 3),
    )
    stop = trio.Event()
    sub: Any = None
    try:
        async with trio.open_nursery() as nursery:
            for w in range(2):
                nursery.start_soon(
                    writer,
                    module_dsn,
                    table,
                    random.Random(seed * 10 + w),
                    1_000_000 * (w + 1),
                    stop,
                )
            sub = await wal_reader.subscribe(mirror, module_dsn, slot, [pub], opts)
            if mode == "die" and crash_at * chunk_size < 3000:
                with trio.move_on_after(10):
                    await failed.wait()
                if failed.is_set():
                    await wal_reader.unsubscribe(sub)
                    sub = await wal_reader.subscribe(mirror, module_dsn, slot, [pub], opts)
            with trio.fail_after(30):
                await sub.wait_streaming()
            stop.set()
        await execute(module_dsn, f"INSERT INTO {table} VALUES ({SENTINEL}, 0, 'end')")
        await mirror.wait_for(lambda: SENTINEL in mirror.copy, within=30)
        expected = await table_rows(module_dsn, table)
        assert mirror.copy == expected
        reads = [entry for entry in mirror.log if entry[0] == "read"]
        streamed = sum(entry[1] for entry in mirror.log if entry[0] == "txn")
        print(
            f"seed {seed}: {mode}, chunk {chunk_size}, {len(reads)} read batches, "
            f"restarted {failed.is_set()}, {streamed} streamed changes, {len(expected)} rows"
        )
        assert streamed > 0
        if mode != "none" and reads[-1][1] > crash_at:
            assert failed.is_set()  # the example did crash or die mid-snapshot
    finally:
        if sub is not None:
            await wal_reader.unsubscribe(sub)
        drop_slot(module_dsn, slot)
