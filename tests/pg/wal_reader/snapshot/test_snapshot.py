"""Initial snapshots: existing rows as reads, then the stream, consistently and resumably."""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
import trio
from psycopg.rows import dict_row
from wr_helpers import FAST_BACKOFF, Recorder, drop_slot, execute, published_table, query, unique

from otpy import Ref
from otpy.pg import wal_reader
from otpy.pg.connection import TrioConnection
from otpy.pg.replication.errors import InvalidOptions
from otpy.pg.wal_reader import ChangeBatch, ReaderOptions, ReplicationHandler
from otpy.pg.wal_reader.snapshot import (
    SnapshotError,
    SnapshotTable,
    copy_fields_binary,
    copy_fields_text,
    is_snapshot_batch,
    table_decoder,
)


class Mirror(ReplicationHandler):
    """Applies reads and changes to an in-memory copy keyed by ``id``, as a user would.

    Chunk 0 of a snapshot means "a snapshot (re)starts": the copy is reset.
    ``log`` keeps what arrived in order: ``("read", chunk, final)`` per snapshot
    batch, ``("txn", n)`` per streamed transaction.  ``fail`` may raise to crash
    the reader (nothing of that batch is applied).
    """

    def __init__(self, fail: Callable[[ChangeBatch], Any] | None = None) -> None:
        self.copy: dict[Any, dict[str, Any]] = {}
        self.log: list[tuple[Any, ...]] = []
        self.fail = fail
        self._event = trio.Event()

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        if self.fail is not None:
            result = self.fail(changes)
            if result is not None:
                await result
        if is_snapshot_batch(changes):
            if changes.chunk == 0:
                self.copy.clear()
            self.log.append(("read", changes.chunk, changes.final))
        else:
            self.log.append(("txn", len(changes)))
        for c in changes:
            if c.op in ("read", "insert", "update"):
                if c.old is not None and c.old.get("id") is not None:
                    self.copy.pop(c.old["id"], None)
                self.copy[c.data["id"]] = c.data
            elif c.op == "delete":
                self.copy.pop(c.data["id"], None)
        self._event.set()
        self._event = trio.Event()

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        """Nothing to do: the copy stays (as a durable target would)."""

    async def wait_for(self, predicate: Callable[[], bool], within: float = 20.0) -> None:
        with trio.fail_after(within):
            while not predicate():
                await self._event.wait()

    @property
    def snapshot_done(self) -> bool:
        return any(entry[0] == "read" and entry[2] for entry in self.log)


def options(**extra: Any) -> dict[str, Any]:
    return {"slot_type": "persistent", "restart_backoff": FAST_BACKOFF, **extra}


@asynccontextmanager
async def streaming(
    handler: ReplicationHandler, dsn: str, publication: str, **extra: Any
) -> AsyncIterator[Ref]:
    """A persistent-slot subscription of ``publication``, once it streams; then gone."""
    slot = unique("snap_slot")
    sub = await wal_reader.subscribe(handler, dsn, slot, [publication], options(**extra))
    try:
        with trio.fail_after(20):
            await sub.wait_streaming()
        yield sub
    finally:
        await wal_reader.unsubscribe(sub)
        drop_slot(dsn, slot)


async def table_rows(dsn: str, table: str) -> dict[Any, dict[str, Any]]:
    async with await TrioConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SET TimeZone TO 'UTC'")
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(f"SELECT * FROM {table}")  # type: ignore[arg-type]
        return {row["id"]: row for row in await cur.fetchall()}


async def test_existing_rows_arrive_as_reads_with_streamed_types_then_changes_follow(
    module_dsn: str, readers: Ref
) -> None:
    table = unique("snap_types")
    pub = published_table(
        module_dsn,
        table,
        "id int PRIMARY KEY, name text, amount numeric, at timestamptz, tags int[]",
    )
    await execute(
        module_dsn,
        f"INSERT INTO {table} SELECT g, 'n' || g, g * 1.5, "
        f"'2024-01-02 03:04:05+00'::timestamptz + g * interval '1 hour', ARRAY[g, g + 1] "
        f"FROM generate_series(1, 25) g",
    )
    slot = unique("snap_types")
    rec = Recorder()
    sub = await wal_reader.subscribe(
        rec, module_dsn, slot, [pub], options(snapshot="initial", snapshot_chunk_size=10)
    )
    try:
        with trio.fail_after(20):
            await sub.wait_streaming()
        reads = [b for b in rec.batches if is_snapshot_batch(b)]
        assert [len(b) for b in reads] == [10, 10, 5]
        assert [b.chunk for b in reads] == [0, 1, 2]
        assert [b.final for b in reads] == [False, False, True]
        rows = {c.data["id"]: c for b in reads for c in b}
        assert sorted(rows) == list(range(1, 26))
        first = rows[1]
        assert (first.table, first.op, first.old, first.schema) == (table, "read", None, "public")
        assert first.data == {
            "id": 1,
            "name": "n1",
            "amount": decimal.Decimal("1.5"),
            "at": dt.datetime(2024, 1, 2, 4, 4, 5, tzinfo=dt.UTC),
            "tags": [1, 2],
        }
        await execute(
            module_dsn,
            f"INSERT INTO {table} VALUES (26, 'n26', 39, '2024-01-03 05:04:05+00', ARRAY[26, 27])",
        )
        changes = await rec.wait_changes(26)
        inserted = changes[-1]
        assert inserted.op == "insert"
        # A streamed row and a snapshot row have the same Python types.
        assert {k: type(v) for k, v in inserted.data.items()} == {
            k: type(v) for k, v in first.data.items()
        }
        assert not is_snapshot_batch(rec.batches[-1])
        progress = await query(
            module_dsn,
            "SELECT state, rows FROM otpy_snapshot_progress WHERE slot = %s",
            [slot],
        )
        assert progress == [("done", 25)]
    finally:
        await wal_reader.unsubscribe(sub)
        drop_slot(module_dsn, slot)


async def test_parallel_ranges_of_a_table_without_a_key_deliver_every_row_once(
    module_dsn: str, readers: Ref
) -> None:
    table = unique("snap_nokey")
    pub = published_table(module_dsn, table, "id int, pad text")
    await execute(
        module_dsn,
        f"ALTER TABLE {table} REPLICA IDENTITY FULL",
        f"INSERT INTO {table} SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g",
    )
    slot = unique("snap_nokey")
    mirror = Mirror()
    sub = await wal_reader.subscribe(
        mirror,
        module_dsn,
        slot,
        [pub],
        options(snapshot="initial", snapshot_chunk_size=700, snapshot_parallelism=3),
    )
    try:
        with trio.fail_after(30):
            await sub.wait_streaming()
        reads = [entry for entry in mirror.log if entry[0] == "read"]
        assert sum(1 for _ in reads) >= 20000 // 700
        assert len(mirror.copy) == 20000
        assert [entry[1] for entry in reads] == list(range(len(reads)))
    finally:
        await wal_reader.unsubscribe(sub)
        drop_slot(module_dsn, slot)


async def test_a_reader_crashing_mid_snapshot_starts_over_and_never_streams_early(
    module_dsn: str, readers: Ref
) -> None:
    table = unique("snap_crash")
    pub = published_table(module_dsn, table, "id int PRIMARY KEY, v int")
    await execute(module_dsn, f"INSERT INTO {table} SELECT g, g FROM generate_series(1, 100) g")
    crashed = trio.Event()

    def crash_once(batch: ChangeBatch) -> None:
        if is_snapshot_batch(batch) and batch.chunk == 2 and not crashed.is_set():
            crashed.set()
            raise RuntimeError("handler crash during the snapshot")

    mirror = Mirror(crash_once)
    slot = unique("snap_crash")
    sub = await wal_reader.subscribe(
        mirror, module_dsn, slot, [pub], options(snapshot="initial", snapshot_chunk_size=10)
    )
    try:
        with trio.fail_after(10):
            await crashed.wait()
        # Committed after the first slot's consistent point, before the restart's.
        await execute(module_dsn, f"UPDATE {table} SET v = -v WHERE id <= 5")
        with trio.fail_after(20):
            await sub.wait_streaming()
        await execute(module_dsn, f"DELETE FROM {table} WHERE id = 100")
        await mirror.wait_for(lambda: 100 not in mirror.copy)
        assert mirror.copy == await table_rows(module_dsn, table)
        reads = [entry for entry in mirror.log if entry[0] == "read"]
        # chunks 0 and 1 of the first snapshot, then the whole second one
        assert [entry[1] for entry in reads] == [0, 1, *range(10)]
        first_txn = next(i for i, entry in enumerate(mirror.log) if entry[0] == "txn")
        assert mirror.log[first_txn - 1] == ("read", 9, True)
    finally:
        await wal_reader.unsubscribe(sub)
        drop_slot(module_dsn, slot)


async def test_a_subscription_that_died_mid_snapshot_is_started_over_by_the_next_one(
    module_dsn: str, readers: Ref
) -> None:
    table = unique("snap_died")
    pub = published_table(module_dsn, table, "id int PRIMARY KEY, v int")
    await execute(module_dsn, f"INSERT INTO {table} SELECT g, g FROM generate_series(1, 50) g")
    stuck = trio.Event()

    async def hang_at_chunk_1(batch: ChangeBatch) -> None:
        if is_snapshot_batch(batch) and batch.chunk == 1:
            stuck.set()
            await trio.sleep_forever()

    first = Mirror(hang_at_chunk_1)
    slot = unique("snap_died")
    opts = options(snapshot="initial", snapshot_chunk_size=10)
    sub = await wal_reader.subscribe(first, module_dsn, slot, [pub], opts)
    with trio.fail_after(10):
        await stuck.wait()
    await wal_reader.unsubscribe(sub)  # the process "dies": the slot stays, mid-snapshot
    (point_before,) = await query(
        module_dsn,
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
        [slot],
    )
    await execute(module_dsn, f"DELETE FROM {table} WHERE id <= 10")  # missed by a resumed stream
    second = Mirror()
    second.copy = dict(first.copy)  # a durable target keeps what it had
    sub = await wal_reader.subscribe(second, module_dsn, slot, [pub], opts)
    try:
        with trio.fail_after(20):
            await sub.wait_streaming()
        assert second.log[0] == ("read", 0, False)
        assert second.copy == await table_rows(module_dsn, table)
        (point_after,) = await query(
            module_dsn,
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
            [slot],
        )
        assert point_after != point_before  # a new slot, with a new snapshot
    finally:
        await wal_reader.unsubscribe(sub)
        drop_slot(module_dsn, slot)


async def test_a_slot_that_finished_its_snapshot_streams_without_reading_again(
    module_dsn: str, readers: Ref
) -> None:
    table = unique("snap_again")
    pub = published_table(module_dsn, table, "id int PRIMARY KEY, v int")
    await execute(module_dsn, f"INSERT INTO {table} SELECT g, g FROM generate_series(1, 5) g")
    slot = unique("snap_again")
    opts = options(snapshot="initial")
    mirror = Mirror()
    sub = await wal_reader.subscribe(mirror, module_dsn, slot, [pub], opts)
    with trio.fail_after(20):
        await sub.wait_streaming()
    await wal_reader.unsubscribe(sub)
    await execute(module_dsn, f"INSERT INTO {table} VALUES (6, 6)")
    sub = await wal_reader.subscribe(mirror, module_dsn, slot, [pub], opts)
    try:
        await mirror.wait_for(lambda: 6 in mirror.copy)
        assert [entry for entry in mirror.log if entry[0] == "read"] == [("read", 0, True)]
        assert mirror.copy == await table_rows(module_dsn, table)
    finally:
        await wal_reader.unsubscribe(sub)
        drop_slot(module_dsn, slot)


async def test_initial_only_reads_the_tables_then_ends_the_subscription(
    module_dsn: str, readers: Ref
) -> None:
    table = unique("snap_only")
    pub = published_table(module_dsn, table, "id int PRIMARY KEY, v int")
    await execute(module_dsn, f"INSERT INTO {table} SELECT g, g FROM generate_series(1, 30) g")
    slot = unique("snap_only")
    mirror = Mirror()
    sub = await wal_reader.subscribe(
        mirror, module_dsn, slot, [pub], {"snapshot": "initial_only", "snapshot_chunk_size": 7}
    )
    with trio.fail_after(20):
        assert await sub.wait_stopped() is None
    assert mirror.copy == await table_rows(module_dsn, table)
    assert (
        await query(module_dsn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot])
        == []
    )


async def test_snapshot_tables_must_be_published_and_restrict_the_read(
    module_dsn: str, readers: Ref
) -> None:
    a, b = unique("snap_a"), unique("snap_b")
    await execute(
        module_dsn,
        f"CREATE TABLE {a} (id int PRIMARY KEY)",
        f"CREATE TABLE {b} (id int PRIMARY KEY)",
        f"INSERT INTO {a} VALUES (1)",
        f"INSERT INTO {b} VALUES (2)",
        f"CREATE PUBLICATION {a}_pub FOR TABLE {a}, {b}",
    )
    with pytest.raises(SnapshotError, match="do not publish"):
        await wal_reader.subscribe(
            Recorder(), module_dsn, unique("snap_tb"), [f"{a}_pub"],
            {"snapshot": "initial_only", "snapshot_tables": ["no_such_table"]},
        )  # fmt: skip
    rec = Recorder()
    sub = await wal_reader.subscribe(
        rec, module_dsn, unique("snap_tb"), [f"{a}_pub"],
        {"snapshot": "initial_only", "snapshot_tables": [f"public.{b}"]},
    )  # fmt: skip
    with trio.fail_after(20):
        await sub.wait_stopped()
    assert rec.rows == [(b, "read", {"id": 2}, None)]


def test_snapshot_options_are_checked_where_they_enter() -> None:
    with pytest.raises(InvalidOptions, match="snapshot"):
        ReaderOptions(snapshot="always")
    with pytest.raises(InvalidOptions, match="snapshot_tables"):
        ReaderOptions(snapshot_tables="users")
    with pytest.raises(InvalidOptions, match="snapshot_parallelism"):
        ReaderOptions(snapshot_parallelism=0)
    assert ReaderOptions(snapshot_tables=["a", "s.b"]).snapshot_tables == ("a", "s.b")


async def test_a_live_snapshot_in_another_session_is_never_dropped_by_a_second_reader(
    module_dsn: str, readers: Ref
) -> None:
    from psycopg.conninfo import conninfo_to_dict

    from otpy.pg.replication.errors import SlotInUse
    from otpy.pg.wal_reader.snapshot import SnapshotRun
    from otpy.pg.wal_reader.stream import ReplicationSession

    table = unique("snap_live")
    pub = published_table(module_dsn, table, "id int PRIMARY KEY")
    await execute(module_dsn, f"INSERT INTO {table} SELECT generate_series(1, 30)")
    stuck = trio.Event()

    async def hang_at_chunk_1(batch: ChangeBatch) -> None:
        if is_snapshot_batch(batch) and batch.chunk == 1:
            stuck.set()
            await trio.sleep_forever()

    slot = unique("snap_live")
    opts = options(snapshot="initial", snapshot_chunk_size=10)
    sub = await wal_reader.subscribe(Mirror(hang_at_chunk_1), module_dsn, slot, [pub], opts)
    other = ReplicationSession(
        conninfo_to_dict(module_dsn), slot, (pub,), ReaderOptions.coerce(opts)
    )
    try:
        with trio.fail_after(10):
            await stuck.wait()
        # The slot is not active while its snapshot is read: only the lock tells.
        assert await query(
            module_dsn, "SELECT active FROM pg_replication_slots WHERE slot_name = %s", [slot]
        ) == [(False,)]
        with pytest.raises(SlotInUse, match="initial snapshot"):
            await SnapshotRun(other).prepare()
        assert await query(
            module_dsn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot]
        ) == [(1,)]
    finally:
        await other.close(final_ack=False, release_timeout=0)
        await wal_reader.unsubscribe(sub)
        drop_slot(module_dsn, slot)


async def test_a_temporary_slot_reads_a_snapshot_then_streams(
    module_dsn: str, readers: Ref
) -> None:
    table = unique("snap_temp")
    pub = published_table(module_dsn, table, "id int PRIMARY KEY, v int")
    await execute(module_dsn, f"INSERT INTO {table} SELECT g, g FROM generate_series(1, 12) g")
    mirror = Mirror()
    sub = await wal_reader.subscribe(
        mirror, module_dsn, unique("snap_temp"), [pub], {"snapshot": "initial"}
    )
    try:
        with trio.fail_after(20):
            await sub.wait_streaming()
        await execute(module_dsn, f"UPDATE {table} SET v = 0 WHERE id = 3")
        await mirror.wait_for(lambda: mirror.copy[3]["v"] == 0)
        assert mirror.copy == await table_rows(module_dsn, table)
    finally:
        await wal_reader.unsubscribe(sub)


def test_block_ranges_cover_each_table_once_without_gaps_and_end_open() -> None:
    from otpy.pg.wal_reader.snapshot import SnapshotTable, _ranges

    big = SnapshotTable("public", "big", ("id",), (23,), pages=1000)
    small = SnapshotTable("public", "small", ("id",), (23,), pages=3)
    ranges = _ranges([small, big], parallelism=3, server=150000)
    assert ranges[0].table is big  # largest first
    bounds = [(r.first, r.last) for r in ranges if r.table is big]
    assert len(bounds) > 3
    assert bounds[0][0] is None and bounds[-1][1] is None  # from the start, to the end
    for (_, last), (first, _) in itertools.pairwise(bounds):
        assert last == first  # contiguous: every block in exactly one range
    assert [(r.first, r.last) for r in ranges if r.table is small] == [(None, None)]
    # One range per table on one connection, and before TID range scans (PostgreSQL 14).
    assert len(_ranges([small, big], parallelism=1, server=150000)) == 2
    assert len(_ranges([small, big], parallelism=3, server=130000)) == 2


async def test_a_publication_row_filter_and_column_list_shape_the_snapshot_as_the_stream(
    module_dsn: str, readers: Ref
) -> None:
    table = unique("snap_filter")
    await execute(
        module_dsn,
        f"CREATE TABLE {table} (id int PRIMARY KEY, v int, secret text)",
        f"INSERT INTO {table} SELECT g, g, 's' FROM generate_series(1, 10) g",
        f"CREATE PUBLICATION {table}_pub FOR TABLE {table} (id, v) WHERE (v > 6)",
    )
    rec = Recorder()
    sub = await wal_reader.subscribe(
        rec, module_dsn, unique("snap_filter"), [f"{table}_pub"], {"snapshot": "initial"}
    )
    try:
        with trio.fail_after(20):
            await sub.wait_streaming()
        assert [c.data for c in rec.changes] == [{"id": i, "v": i} for i in range(7, 11)]
        await execute(module_dsn, f"INSERT INTO {table} VALUES (11, 11, 's'), (0, 0, 's')")
        changes = await rec.wait_changes(5)
        assert changes[-1].data == {"id": 11, "v": 11}  # the stream publishes the same shape
    finally:
        await wal_reader.unsubscribe(sub)


# One row of every kind of value the stream decodes with a loader of otpy's own
# or a user type's: a snapshot row must be the very same Python values.
ODD_COLUMNS = (
    "id int PRIMARY KEY, price money, pos point, doc jsonb, at timestamptz, day date, "
    "feeling {enum}, lsn pg_lsn, pos_int {domain}, note text, tags text[], shape box, "
    "addr inet, bits bit(4)"
)
ODD_VALUES = [
    "12.5, point(1, -2), 'null', 'infinity', '-infinity', 'happy', '16/B374D848', 7, 'x', "
    "ARRAY['a', NULL], box(point(0, 0), point(1, 1)), '10.1.2.3', B'1010'",
    "0, point(0.5, 0), '{\"k\": [1, null]}', '2024-02-03 04:05:06+00', '2024-02-03', 'sad', "
    "'0/0', 1, NULL, '{}', NULL, '::1/128', B'0000'",
]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
async def test_a_snapshot_row_is_the_values_the_stream_delivers_for_the_same_row(
    module_dsn: str, readers: Ref, binary: bool
) -> None:
    enum, domain, table = unique("snap_mood"), unique("snap_pos"), unique("snap_odd")
    await execute(
        module_dsn,
        f"CREATE TYPE {enum} AS ENUM ('sad', 'happy')",
        f"CREATE DOMAIN {domain} AS int CHECK (VALUE > 0)",
    )
    pub = published_table(module_dsn, table, ODD_COLUMNS.format(enum=enum, domain=domain))
    for i, values in enumerate(ODD_VALUES, start=1):
        await execute(module_dsn, f"INSERT INTO {table} VALUES ({i}, {values})")
    rec = Recorder()
    async with streaming(rec, module_dsn, pub, snapshot="initial", binary=binary):
        reads = {c.data["id"]: c.data for b in rec.batches if is_snapshot_batch(b) for c in b}
        assert sorted(reads) == [1, 2]
        for i, values in enumerate(ODD_VALUES, start=1):
            await execute(module_dsn, f"INSERT INTO {table} VALUES ({100 + i}, {values})")
        changes = await rec.wait_changes(2 + len(ODD_VALUES))
        streamed = {c.data["id"] - 100: c.data for c in changes if c.op == "insert"}
        for i in reads:
            read = {k: v for k, v in reads[i].items() if k != "id"}
            stream = {k: v for k, v in streamed[i].items() if k != "id"}
            assert read == stream
            assert {k: type(v) for k, v in read.items()} == {k: type(v) for k, v in stream.items()}
        first = reads[1]
        assert first["at"] == dt.datetime.max.replace(tzinfo=dt.UTC)
        assert first["day"] == dt.date.min
        assert first["price"] == decimal.Decimal("12.50")
        assert first["feeling"].name == "happy"


async def test_types_without_a_binary_loader_and_a_table_without_columns_are_read_as_streamed(
    module_dsn: str, readers: Ref
) -> None:
    # A column no loader takes in binary makes the table's COPY text (every
    # value then arrives as the text stream's value); a table with no column
    # reads its rows as empty dicts. Both go through the row function the
    # reader uses, whose binary trailer is told apart from a failing row.
    table, bare = unique("snap_text"), unique("snap_bare")
    pub = published_table(module_dsn, table, "id int PRIMARY KEY, shape box, q tsquery, note text")
    await execute(
        module_dsn, f"CREATE TABLE {bare} ()", f"ALTER PUBLICATION {pub} ADD TABLE {bare}"
    )
    await execute(
        module_dsn,
        f"INSERT INTO {table} SELECT g, box(point(g, 0), point(0, -g)), 'a & b', 'n' || g "
        f"FROM generate_series(1, 7) g",
        f"INSERT INTO {bare} DEFAULT VALUES",
        f"INSERT INTO {bare} DEFAULT VALUES",
    )
    rec = Recorder()
    async with streaming(rec, module_dsn, pub, snapshot="initial", snapshot_chunk_size=3):
        reads = [c for b in rec.batches if is_snapshot_batch(b) for c in b]
        typed = {c.data["id"]: c.data for c in reads if c.table == table}
        assert sorted(typed) == list(range(1, 8))
        assert typed[2] == {"id": 2, "shape": "(2,0),(0,-2)", "q": "'a' & 'b'", "note": "n2"}
        assert [c.data for c in reads if c.table == bare] == [{}, {}]
        await execute(
            module_dsn, f"INSERT INTO {table} VALUES (8, box(point(8, 0), point(0, -8)), 'c', 'n8')"
        )
        inserted = (await rec.wait_changes(len(reads) + 1))[-1]
        assert inserted.op == "insert"
        assert inserted.data == {"id": 8, "shape": "(8,0),(0,-8)", "q": "'c'", "note": "n8"}


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_a_row_the_fast_path_refuses_is_split_into_the_fields_copy_sent(
    module_dsn: str, binary: bool
) -> None:
    # The careful path (copy_fields_* then ValueDecoder.decode) must give what the
    # fast path gives for every row it can take: escapes, tabs, newlines, NULLs,
    # empty strings, the binary header on the first row.
    table = unique("snap_fields")
    columns = "id int, t text, b bytea, n numeric, a text[], j jsonb"
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} ({columns})")
        conn.execute(
            f"INSERT INTO {table} VALUES "
            "(1, E'tab\\there\\nnew\\\\back\\rcr\\b\\f' || chr(11), E'\\\\x00ff5c', 1.5, "
            "ARRAY['a\tb', NULL], '{\"k\": \"v\\\\n\"}'), "
            "(2, '', '', NULL, '{}', 'null'), (3, NULL, NULL, '-2.25', NULL, NULL), "
            "(4, E'\\\\N', E'\\\\x5c4e', -0.0, ARRAY[E'\\\\'], '[]')"
        )
        oid, types = conn.execute(
            "SELECT %s::regclass::oid, array_agg(atttypid ORDER BY attnum) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0",
            [table, table],
        ).fetchone()  # type: ignore[misc]
        t = SnapshotTable("public", table, ("id", "t", "b", "n", "a", "j"), tuple(types), oid=oid)
        decoder = table_decoder([t])
        fields = copy_fields_binary if binary else copy_fields_text
        statement = f"COPY {table} TO STDOUT" + (" (FORMAT BINARY)" if binary else "")
        fast = psycopg.Connection.connect(module_dsn, context=decoder.fast_context())
        with fast, fast.cursor().copy(statement) as copy:
            copy.set_types(list(types))
            rows = []
            for data in copy:
                if bytes(data) == b"\xff\xff":
                    continue
                parsed = copy.formatter.parse_row(data)
                assert parsed is not None
                rows.append((dict(zip(t.columns, parsed, strict=True)), bytes(data)))
    assert len(rows) == 4
    for values, data in rows:
        assert decoder.decode(oid, fields(data)) == values
    assert rows[0][0]["t"] == "tab\there\nnew\\back\rcr\b\f\v"
    assert rows[3][0]["t"] == "\\N"


@pytest.mark.requires("pg18")
async def test_generated_columns_are_in_the_snapshot_when_the_publication_sends_them(
    module_dsn: str, readers: Ref
) -> None:
    # PostgreSQL 18 publishes stored generated columns with publish_generated_columns:
    # the snapshot then reads them too, and leaves them out otherwise, as the stream.
    table, plain = unique("snap_gen"), unique("snap_gen_plain")
    columns = "id int PRIMARY KEY, v int, twice int GENERATED ALWAYS AS (v * 2) STORED"
    await execute(
        module_dsn,
        f"CREATE TABLE {table} ({columns})",
        f"CREATE TABLE {plain} ({columns})",
        f"CREATE PUBLICATION {table}_pub FOR TABLE {table} "
        "WITH (publish_generated_columns = stored)",
        f"ALTER PUBLICATION {table}_pub ADD TABLE {plain} (id, v)",
        f"INSERT INTO {table} (id, v) VALUES (1, 10)",
        f"INSERT INTO {plain} (id, v) VALUES (1, 10)",
    )
    rec = Recorder()
    async with streaming(rec, module_dsn, f"{table}_pub", snapshot="initial"):
        reads = {c.table: c.data for b in rec.batches if is_snapshot_batch(b) for c in b}
        await execute(
            module_dsn,
            f"INSERT INTO {table} (id, v) VALUES (2, 10)",
            f"INSERT INTO {plain} (id, v) VALUES (2, 10)",
        )
        streamed = {c.table: c.data for c in await rec.wait_changes(4) if c.op == "insert"}
        assert reads[table] == {"id": 1, "v": 10, "twice": 20}
        assert reads[plain] == {"id": 1, "v": 10}
        for name in (table, plain):
            assert set(reads[name]) == set(streamed[name])
            assert {**streamed[name], "id": 1} == reads[name]


@pytest.mark.parametrize("via_root", [False, True], ids=["leaves", "via_root"])
async def test_inherited_and_partitioned_tables_are_read_as_the_stream_names_their_rows(
    module_dsn: str, readers: Ref, via_root: bool
) -> None:
    # FOR TABLE parent publishes its inheritance children as tables of their own:
    # each row is read once, under the table the stream names it by (a partition,
    # or the partitioned root with publish_via_partition_root).
    parent, child, root = unique("snap_inh"), unique("snap_inh_child"), unique("snap_part")
    await execute(
        module_dsn,
        f"CREATE TABLE {parent} (id int PRIMARY KEY, v text)",
        f"CREATE TABLE {child} (extra int) INHERITS ({parent})",
        f"CREATE TABLE {root} (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)",
        f"CREATE TABLE {root}_a PARTITION OF {root} FOR VALUES FROM (0) TO (100)",
        f"CREATE TABLE {root}_b PARTITION OF {root} FOR VALUES FROM (100) TO (200)",
        f"CREATE PUBLICATION {parent}_pub FOR TABLE {parent}, {root} "
        f"WITH (publish_via_partition_root = {str(via_root).lower()})",
        f"INSERT INTO {parent} VALUES (1, 'p')",
        f"INSERT INTO {child} VALUES (2, 'c', 7)",
        f"INSERT INTO {root} VALUES (3, 'a'), (150, 'b')",
    )
    rec = Recorder()
    async with streaming(rec, module_dsn, f"{parent}_pub", snapshot="initial"):
        reads = sorted(
            (c.table, c.data["id"]) for b in rec.batches if is_snapshot_batch(b) for c in b
        )
        await execute(
            module_dsn,
            f"INSERT INTO {parent} VALUES (11, 'p')",
            f"INSERT INTO {child} VALUES (12, 'c', 7)",
            f"INSERT INTO {root} VALUES (13, 'a'), (160, 'b')",
        )
        streamed = sorted(
            (c.table, c.data["id"] - 10)
            for c in await rec.wait_changes(len(reads) + 4)
            if c.op == "insert"
        )
        assert reads == streamed
        parts = [(root, 3), (root, 150)] if via_root else [(f"{root}_a", 3), (f"{root}_b", 150)]
        assert reads == sorted([(parent, 1), (child, 2), *parts])
