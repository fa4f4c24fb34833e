"""Backfills: re-read tables while the reader streams, with DBLog watermarks."""

from __future__ import annotations

import datetime as dt
import random

import pytest
import trio
from test_snapshot import Mirror, options, streaming, table_rows
from test_snapshot_property import SENTINEL, writer
from wr_helpers import Recorder, drop_slot, execute, published_table, unique

from otpy import Ref
from otpy.pg import wal_reader
from otpy.pg.wal_reader import ChangeBatch
from otpy.pg.wal_reader.snapshot import BackfillError, is_backfill_batch


async def test_a_backfill_delivers_the_rows_as_reads_and_hides_its_watermarks(
    module_dsn: str, readers: Ref
) -> None:
    table = unique("bf_basic")
    pub = published_table(module_dsn, table, "id int PRIMARY KEY, v text")
    await execute(
        module_dsn, f"INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(1, 40) g"
    )
    rec = Recorder()
    slot = unique("bf_basic")
    sub = await wal_reader.subscribe(rec, module_dsn, slot, [pub], options(messages=True))
    try:
        with trio.fail_after(20):
            await sub.wait_streaming()
            assert await wal_reader.backfill(sub, [table], chunk_size=7) == 40
        backfilled = [b for b in rec.batches if is_backfill_batch(b)]
        assert [len(b) for b in backfilled] == [7, 7, 7, 7, 7, 5]
        assert [b.chunk for b in backfilled] == list(range(6))
        assert sorted(c.data["id"] for b in backfilled for c in b) == list(range(1, 41))
        assert {c.op for c in rec.changes} == {"read"}  # no watermark message reached it
        with trio.fail_after(20):
            assert await wal_reader.backfill(sub, [table], where="id > 35", chunk_size=100) == 5
    finally:
        await wal_reader.unsubscribe(sub)
        drop_slot(module_dsn, slot)


async def test_a_backfill_needs_a_subscription_with_messages(module_dsn: str, readers: Ref) -> None:
    table = unique("bf_nomsg")
    pub = published_table(module_dsn, table, "id int PRIMARY KEY")
    slot = unique("bf_nomsg")
    sub = await wal_reader.subscribe(Recorder(), module_dsn, slot, [pub], options())
    try:
        with pytest.raises(BackfillError, match="messages=True"):
            await wal_reader.backfill(sub, [table])
    finally:
        await wal_reader.unsubscribe(sub)
        drop_slot(module_dsn, slot)


@pytest.mark.parametrize("seed", range(4))
async def test_a_backfill_during_concurrent_writes_never_applies_an_older_version(
    module_dsn: str, readers: Ref, seed: int
) -> None:
    rng = random.Random(1000 + seed)
    table = unique("bf_prop")
    pub = published_table(module_dsn, table, "id int PRIMARY KEY, v int, s text")
    await execute(
        module_dsn,
        f"INSERT INTO {table} SELECT g, g % 100, 'r' FROM generate_series(1, "
        f"{rng.randint(100, 1500)}) g",
    )
    mirror = Mirror()
    slot = unique("bf_prop")
    sub = await wal_reader.subscribe(mirror, module_dsn, slot, [pub], options(messages=True))
    try:
        with trio.fail_after(20):
            await sub.wait_streaming()
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for w in range(2):
                nursery.start_soon(
                    writer,
                    module_dsn,
                    table,
                    random.Random(seed * 10 + w),
                    1_000_000 * (w + 1),
                    stop,
                    600,
                )
            with trio.fail_after(40):
                await wal_reader.backfill(sub, [table], chunk_size=rng.choice([40, 200, 1000]))
            stop.set()
        await execute(module_dsn, f"INSERT INTO {table} VALUES ({SENTINEL}, 0, 'end')")
        await mirror.wait_for(lambda: SENTINEL in mirror.copy, within=30)
        assert mirror.copy == await table_rows(module_dsn, table)
    finally:
        await wal_reader.unsubscribe(sub)
        drop_slot(module_dsn, slot)


async def test_a_backfill_chunk_whose_handler_crashed_is_delivered_after_the_restart(
    module_dsn: str, readers: Ref
) -> None:
    table = unique("bf_crash")
    pub = published_table(module_dsn, table, "id int PRIMARY KEY")
    await execute(module_dsn, f"INSERT INTO {table} SELECT generate_series(1, 20)")
    crashed = []

    def crash_once(batch: ChangeBatch) -> None:
        if is_backfill_batch(batch) and batch.chunk == 1 and not crashed:
            crashed.append(batch.chunk)
            raise RuntimeError("handler crash on a backfill chunk")

    rec = Recorder(crash_once)
    slot = unique("bf_crash")
    sub = await wal_reader.subscribe(rec, module_dsn, slot, [pub], options(messages=True))
    try:
        with trio.fail_after(30):
            await sub.wait_streaming()
            assert await wal_reader.backfill(sub, [table], chunk_size=8) == 20
        assert crashed == [1]
        ids = [c.data["id"] for b in rec.batches if is_backfill_batch(b) for c in b]
        assert ids == list(range(1, 21))
    finally:
        await wal_reader.unsubscribe(sub)
        drop_slot(module_dsn, slot)


async def test_a_backfill_refuses_a_table_without_a_primary_key_before_reading_any(
    module_dsn: str, readers: Ref
) -> None:
    keyed, unkeyed = unique("bf_keyed"), unique("bf_unkeyed")
    await execute(
        module_dsn,
        f"CREATE TABLE {keyed} (id int PRIMARY KEY)",
        f"CREATE TABLE {unkeyed} (id int)",
        f"INSERT INTO {keyed} VALUES (1)",
        f"CREATE PUBLICATION {keyed}_pub FOR TABLE {keyed}, {unkeyed}",
    )
    rec = Recorder()
    slot = unique("bf_keyed")
    sub = await wal_reader.subscribe(
        rec, module_dsn, slot, [f"{keyed}_pub"], options(messages=True)
    )
    try:
        with pytest.raises(BackfillError, match="no primary key"):
            await wal_reader.backfill(sub)
        assert rec.batches == []
    finally:
        await wal_reader.unsubscribe(sub)
        drop_slot(module_dsn, slot)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
async def test_a_backfill_row_is_the_values_the_stream_delivers_and_pages_past_infinity(
    module_dsn: str, readers: Ref, binary: bool
) -> None:
    # Keyed by a timestamptz holding ±infinity (decoded as datetime.max/min, which
    # are no faithful literals): pages continue after the key as the server
    # prints it, so every row is read once, and values are the stream's.
    enum, table = unique("bf_mood"), unique("bf_odd")
    await execute(module_dsn, f"CREATE TYPE {enum} AS ENUM ('sad', 'happy')")
    pub = published_table(
        module_dsn,
        table,
        f"at timestamptz PRIMARY KEY, price money, doc jsonb, feeling {enum}, shape box",
    )
    values = (
        "12.5, 'null', 'happy', box(point(0, 0), point(1, 1))",
        "0, '{\"a\": [1, null]}', 'sad', NULL",
    )
    keys = ["'-infinity'", "'2024-01-01 00:00:00+00'", "'2024-06-01 12:00:00+00'", "'infinity'"]
    rec = Recorder()
    async with streaming(rec, module_dsn, pub, messages=True, binary=binary) as sub:
        for i, key in enumerate(keys):
            await execute(module_dsn, f"INSERT INTO {table} VALUES ({key}, {values[i % 2]})")
        streamed = {c.data["at"]: c.data for c in await rec.wait_changes(len(keys))}
        with trio.fail_after(20):
            assert await wal_reader.backfill(sub, [table], chunk_size=1) == len(keys)
        read = [c.data for b in rec.batches if is_backfill_batch(b) for c in b]
        assert [r["at"] for r in read] == sorted(streamed)  # each once, in key order
        for row in read:
            assert row == streamed[row["at"]]
            assert {k: type(v) for k, v in row.items()} == {
                k: type(v) for k, v in streamed[row["at"]].items()
            }
        assert read[-1]["at"] == dt.datetime.max.replace(tzinfo=dt.UTC)


async def test_a_backfill_of_an_inheritance_parent_reads_only_its_own_rows(
    module_dsn: str, readers: Ref
) -> None:
    # The child is a published table of its own (FOR TABLE parent adds it): its
    # rows are backfilled under its name, once.
    parent, child = unique("bf_inh"), unique("bf_inh_child")
    await execute(
        module_dsn,
        f"CREATE TABLE {parent} (id int PRIMARY KEY, v text)",
        f"CREATE TABLE {child} (PRIMARY KEY (id)) INHERITS ({parent})",
        f"CREATE PUBLICATION {parent}_pub FOR TABLE {parent}",
        f"INSERT INTO {parent} VALUES (1, 'p')",
        f"INSERT INTO {child} VALUES (2, 'c'), (3, 'c')",
    )
    rec = Recorder()
    async with streaming(rec, module_dsn, f"{parent}_pub", messages=True) as sub:
        with trio.fail_after(20):
            assert await wal_reader.backfill(sub, [parent]) == 1
            assert await wal_reader.backfill(sub, [child]) == 2
        read = sorted((c.table, c.data["id"]) for c in rec.changes)
        assert read == [(parent, 1), (child, 2), (child, 3)]
