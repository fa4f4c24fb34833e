"""Exactly-once into a PostgreSQL target: skipping, the stored position, the start check.

Each test copies the source table ``src`` (``module_dsn``) into ``dst`` of
the target database through the ``target`` pool, with an
:class:`~otpy.pg.exactly_once.ExactlyOnceHandler`.  ``dst`` has no key, so a
transaction applied twice shows as duplicate rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from eo_helpers import FAST, Copier, counts, wait_applied
from psycopg import pq
from psycopg.errors import UniqueViolation
from wr_helpers import Recorder, drop_slot, execute, published_table, query, unique

from otpy import Ref
from otpy.pg import pool, wal_reader
from otpy.pg.config import DatabaseConfig, PoolConfig
from otpy.pg.exactly_once import (
    DEFAULT_PROGRESS_TABLE,
    ExactlyOnce,
    ExactlyOnceError,
    ExactlyOnceHandler,
    PositionMismatch,
)
from otpy.pg.replication.errors import InvalidHandler
from otpy.pg.replication.lsn import LSN
from otpy.pg.wal_reader import ChangeBatch, dead_letters

PERSISTENT = {"slot_type": "persistent", "restart_backoff": FAST}


@pytest.fixture(scope="module")
def src(module_dsn: str) -> str:
    return published_table(module_dsn, "src", "id bigserial PRIMARY KEY, v int")


@pytest.fixture
async def tables(module_dsn: str, target_dsn: str, src: str) -> str:
    await execute(module_dsn, "TRUNCATE src")
    await execute(target_dsn, "DROP TABLE IF EXISTS dst", "CREATE TABLE dst (id bigint, v int)")
    return src


async def insert(dsn: str, rows: int, transactions: int = 1) -> None:
    for _ in range(transactions):
        await execute(dsn, f"INSERT INTO src (v) SELECT g FROM generate_series(1, {rows}) g")


async def confirmed_flush(dsn: str, slot: str) -> LSN:
    rows = await query(
        dsn,
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        [slot],
    )
    return LSN.parse(rows[0][0])


async def test_a_transaction_committed_in_the_target_but_not_acknowledged_is_not_applied_again(
    module_dsn: str, target_dsn: str, tables: str, target_pool: pool.Pool, readers: Ref
) -> None:
    crashed: set[int] = set()

    def crash_after_commit(batch: ChangeBatch) -> None:
        # The target committed; the handler dies before the reader acknowledges.
        if batch.xid not in crashed:
            crashed.add(batch.xid or 0)
            raise RuntimeError("injected crash after the target commit")

    copier = Copier("target", unique("eo"), fail_after=crash_after_commit)
    slot = unique("eo")
    ref = await wal_reader.subscribe(copier, module_dsn, slot, [tables], PERSISTENT)
    try:
        await insert(module_dsn, 3, transactions=5)
        await wait_applied(copier, module_dsn, target_dsn)
        # Each redelivery of a committed transaction is recognised and skipped.
        await copier.wait_for(lambda: copier.exactly_once.duplicates == 5)
        result = await counts(module_dsn, target_dsn)
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)
    assert len(crashed) == 5 and copier.stops >= 5
    assert result == {"committed": 15, "applied": 15, "duplicates": 0, "lost": 0, "unknown": 0}


async def test_a_handler_failing_before_the_commit_leaves_nothing_in_the_target(
    module_dsn: str, target_dsn: str, tables: str, target_pool: pool.Pool, readers: Ref
) -> None:
    failed: set[int] = set()

    def fail_once(batch: ChangeBatch) -> None:
        if batch.xid not in failed:
            failed.add(batch.xid or 0)
            raise RuntimeError("injected failure inside the target transaction")

    copier = Copier("target", unique("eo"), fail_before=fail_once)
    slot = unique("eo")
    ref = await wal_reader.subscribe(copier, module_dsn, slot, [tables], PERSISTENT)
    try:
        await insert(module_dsn, 4, transactions=3)
        result = await wait_applied(copier, module_dsn, target_dsn)
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)
    assert len(failed) == 3
    assert result["applied"] == 12 and result["duplicates"] == 0
    assert copier.exactly_once.applied == 3 and copier.exactly_once.duplicates == 0


async def test_the_stored_position_is_at_least_the_end_of_the_last_applied_commit(
    module_dsn: str, target_dsn: str, tables: str, target_pool: pool.Pool, readers: Ref
) -> None:
    copier = Copier("target", unique("eo"))
    slot = unique("eo")
    ref = await wal_reader.subscribe(copier, module_dsn, slot, [tables], PERSISTENT)
    try:
        assert await copier.exactly_once.position() is None  # a fresh target
        await insert(module_dsn, 2, transactions=2)
        await wait_applied(copier, module_dsn, target_dsn)
        # The commit stored its end; an idle keepalive may have moved it further since.
        position = await copier.exactly_once.position()
        assert position is not None and position >= copier.batches[-1].end_lsn
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)


async def test_a_large_transaction_is_applied_in_one_target_transaction(
    module_dsn: str, target_dsn: str, tables: str, target_pool: pool.Pool, readers: Ref
) -> None:
    """Chunks share one target transaction: a failure at chunk 2 leaves no chunk behind."""
    attempts = 0

    def fail_third_chunk_once(batch: ChangeBatch) -> None:
        nonlocal attempts
        if batch.chunk == 2:
            attempts += 1
            if attempts == 1:
                raise RuntimeError("injected failure in the middle of a large transaction")

    copier = Copier("target", unique("eo"), fail_before=fail_third_chunk_once)
    slot = unique("eo")
    options = {**PERSISTENT, "max_batch_size": 10}
    ref = await wal_reader.subscribe(copier, module_dsn, slot, [tables], options)
    try:
        await insert(module_dsn, 35)
        result = await wait_applied(copier, module_dsn, target_dsn)
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)
    assert attempts == 2
    assert result["applied"] == 35 and result["duplicates"] == 0
    assert [b.chunk for b in copier.batches][-4:] == [0, 1, 2, 3]


async def test_a_recreated_slot_is_reported_not_silently_skipped(
    module_dsn: str, target_dsn: str, tables: str, target_pool: pool.Pool, readers: Ref
) -> None:
    origin, slot = unique("eo"), unique("eo")
    copier = Copier("target", origin)
    ref = await wal_reader.subscribe(copier, module_dsn, slot, [tables], PERSISTENT)
    try:
        await insert(module_dsn, 2)
        await wait_applied(copier, module_dsn, target_dsn)
    finally:
        await wal_reader.unsubscribe(ref)
    stored = await copier.exactly_once.position()
    drop_slot(module_dsn, slot)
    await insert(module_dsn, 3)  # committed while no slot exists: lost for this target
    with pytest.raises(PositionMismatch) as caught:
        await wal_reader.subscribe(Copier("target", origin), module_dsn, slot, [tables], PERSISTENT)
    assert caught.value.stored == stored and caught.value.confirmed > stored
    assert "trust_slot" in str(caught.value)
    # The documented way out, once the target is resynchronised: trust the slot.
    trusting = Copier("target", origin, on_mismatch="trust_slot")
    ref = await wal_reader.subscribe(trusting, module_dsn, slot, [tables], PERSISTENT)
    try:
        assert (position := await trusting.exactly_once.position()) is not None
        assert position >= caught.value.confirmed
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)


async def test_a_slot_behind_the_target_only_replays_duplicates_which_are_skipped(
    module_dsn: str, target_dsn: str, tables: str, target_pool: pool.Pool, readers: Ref
) -> None:
    origin, ahead, behind = unique("eo"), unique("eo"), unique("eo")
    await execute(module_dsn, f"SELECT pg_create_logical_replication_slot('{behind}', 'pgoutput')")
    copier = Copier("target", origin)
    ref = await wal_reader.subscribe(copier, module_dsn, ahead, [tables], PERSISTENT)
    try:
        await insert(module_dsn, 2, transactions=4)
        await wait_applied(copier, module_dsn, target_dsn)
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, ahead)
    replay = Copier("target", origin)
    ref = await wal_reader.subscribe(replay, module_dsn, behind, [tables], PERSISTENT)
    try:
        await replay.wait_for(lambda: len(replay.batches) >= 4)
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, behind)
    assert replay.exactly_once.duplicates == 4 and replay.exactly_once.applied == 0
    assert (await counts(module_dsn, target_dsn))["duplicates"] == 0


async def test_idle_positions_are_stored_before_the_slot_moves_past_them(
    module_dsn: str, target_dsn: str, tables: str, target_pool: pool.Pool, readers: Ref
) -> None:
    """Keepalives move the slot while nothing is published: the target follows first.

    Otherwise every restart after an idle period would look like a recreated slot.
    """
    await execute(module_dsn, "CREATE TABLE IF NOT EXISTS unpublished (v int)")
    origin, slot = unique("eo"), unique("eo")
    copier = Copier("target", origin, progress_interval=0)
    options = {**PERSISTENT, "status_interval": 0.1}
    ref = await wal_reader.subscribe(copier, module_dsn, slot, [tables], options)
    try:
        await insert(module_dsn, 1)
        await wait_applied(copier, module_dsn, target_dsn)
        applied_at = await copier.exactly_once.position()
        assert applied_at is not None
        with trio.fail_after(30):
            while await confirmed_flush(module_dsn, slot) <= applied_at:
                await execute(module_dsn, "INSERT INTO unpublished VALUES (1)")
                await trio.sleep(0.05)  # let a keepalive come: the condition is the slot's
    finally:
        await wal_reader.unsubscribe(ref)
    try:
        confirmed = await confirmed_flush(module_dsn, slot)
        stored = await copier.exactly_once.position()
        assert stored is not None and confirmed <= stored
        # So a restart is accepted: no false PositionMismatch.
        again = Copier("target", origin)
        ref = await wal_reader.subscribe(again, module_dsn, slot, [tables], PERSISTENT)
        await wal_reader.unsubscribe(ref)
    finally:
        drop_slot(module_dsn, slot)


async def test_exactly_once_refuses_a_temporary_slot(
    module_dsn: str, tables: str, target_pool: pool.Pool, readers: Ref
) -> None:
    with pytest.raises(ExactlyOnceError, match="persistent"):
        await wal_reader.subscribe(
            Copier("target", unique("eo")), module_dsn, unique("eo"), [tables]
        )


def test_bad_arguments_are_refused_naming_them() -> None:
    with pytest.raises(ExactlyOnceError, match="on_mismatch"):
        ExactlyOnce("target", "o", on_mismatch="trust_offset")
    with pytest.raises(ExactlyOnceError, match="origin"):
        ExactlyOnce("target", "")
    with pytest.raises(ExactlyOnceError, match="skip_replicated"):
        ExactlyOnce("target", "o", skip_replicated="false")  # type: ignore[arg-type]
    with pytest.raises(ExactlyOnceError, match="progress_interval"):
        ExactlyOnce("target", "o", progress_interval=float("nan"))

    class NoApply(ExactlyOnceHandler):
        pass

    with pytest.raises(InvalidHandler, match="apply"):
        NoApply("target", "o")


async def test_a_pooled_connection_is_returned_without_the_origin(
    module_dsn: str, target_dsn: str, tables: str, target_pool: pool.Pool, readers: Ref
) -> None:
    """The next user of the connection must not write under (or hold) the origin."""
    copier = Copier("target", unique("eo"), fail_before=_always_fail_first(set()))
    slot = unique("eo")
    ref = await wal_reader.subscribe(copier, module_dsn, slot, [tables], PERSISTENT)
    try:
        await insert(module_dsn, 1, transactions=2)
        await wait_applied(copier, module_dsn, target_dsn)
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)
    for _ in range(3):
        async with pool.connection("target") as conn:
            cur = await conn.execute("SELECT pg_replication_origin_session_is_setup()")
            assert await cur.fetchone() == (False,)


def _always_fail_first(seen: set[Any]) -> Any:
    def fail(batch: ChangeBatch) -> None:
        if batch.xid not in seen:
            seen.add(batch.xid)
            raise RuntimeError("injected")

    return fail


async def test_writes_through_the_exactly_once_path_are_tagged_with_the_origin(
    module_dsn: str, target_dsn: str, tables: str, target_pool: pool.Pool, readers: Ref
) -> None:
    """A reader of the target sees the applier's transactions under its origin, local ones not."""
    await execute(
        target_dsn, "DROP PUBLICATION IF EXISTS dst_pub", "CREATE PUBLICATION dst_pub FOR TABLE dst"
    )
    origin, slot, target_slot = unique("eo"), unique("eo"), unique("eo")
    watcher = Recorder()
    watch = await wal_reader.subscribe(watcher, target_dsn, target_slot, ["dst_pub"])
    copier = Copier("target", origin)
    ref = await wal_reader.subscribe(copier, module_dsn, slot, [tables], PERSISTENT)
    try:
        await insert(module_dsn, 2, transactions=2)
        await wait_applied(copier, module_dsn, target_dsn)
        await execute(target_dsn, "INSERT INTO dst VALUES (-1, -1)")  # a local write
        await watcher.wait_for(lambda: len(watcher.batches) >= 3)
    finally:
        await wal_reader.unsubscribe(ref)
        await wal_reader.unsubscribe(watch)
        drop_slot(module_dsn, slot)
    assert [b.origin for b in watcher.batches] == [origin, origin, None]


class _FailsAtCommitOnce(Copier):
    """Also writes a row into ``table`` on each first attempt: its COMMIT then fails.

    ``guard`` breaks a deferred unique constraint; ``doomed`` fires a deferred
    trigger that terminates its own backend (as a fast shutdown does).  Either
    way the target transaction aborts at COMMIT, after the source position was
    set up for it (``pg_replication_origin_xact_setup``): PostgreSQL 18 writes
    that position into the abort record and advances the origin on abort too.
    """

    def __init__(self, *args: Any, table: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.doom = table
        self.failed: set[Any] = set()

    async def apply(self, conn: Any, changes: ChangeBatch) -> None:
        await super().apply(conn, changes)
        if changes.xid not in self.failed:
            self.failed.add(changes.xid)
            await conn.execute(f"INSERT INTO {self.doom} (k) VALUES (1)")


@pytest.mark.parametrize("table", ["guard", "doomed"])
async def test_a_target_commit_that_fails_does_not_mark_its_transaction_applied(
    module_dsn: str,
    target_dsn: str,
    tables: str,
    target_pool: pool.Pool,
    readers: Ref,
    table: str,
) -> None:
    await execute(
        target_dsn,
        "DROP TABLE IF EXISTS guard, doomed",
        "CREATE TABLE guard (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)",
        "INSERT INTO guard VALUES (1)",
        "CREATE TABLE doomed (k int)",
        "CREATE OR REPLACE FUNCTION doom() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER doom AFTER INSERT ON doomed DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION doom()",
    )
    copier = _FailsAtCommitOnce("target", unique("eo"), table=table)
    slot = unique("eo")
    ref = await wal_reader.subscribe(copier, module_dsn, slot, [tables], PERSISTENT)
    try:
        await insert(module_dsn, 3, transactions=2)
        await wait_applied(copier, module_dsn, target_dsn)
        result = await counts(module_dsn, target_dsn)
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)
    assert len(copier.failed) == 2 and copier.stops >= 2
    assert result == {"committed": 6, "applied": 6, "duplicates": 0, "lost": 0, "unknown": 0}
    # Each transaction failed at COMMIT once, then was applied: none skipped as a duplicate.
    assert copier.exactly_once.duplicates == 0


def _batch(commit: int, xid: int = 7) -> ChangeBatch:
    return ChangeBatch(
        [],
        final=True,
        chunk=0,
        xid=xid,
        commit_lsn=LSN(commit),
        end_lsn=LSN(commit + 0x10),
        commit_time=None,
    )


async def test_the_position_and_the_commit_go_to_the_server_in_one_message(
    target_pool: pool.Pool, tmp_path: Path
) -> None:
    """One round trip for both: the position row is updated in the COMMIT's own message."""
    eo = ExactlyOnce("target", unique("eo"))
    opened = eo.transaction(_batch(0x1000))
    conn = await opened.__aenter__()
    assert conn is not None
    trace = tmp_path / "trace"
    with trace.open("w") as f:
        conn.pgconn.trace(f.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            await opened.__aexit__(None, None, None)
        finally:
            conn.pgconn.untrace()
    sent = [line for line in trace.read_text().splitlines() if line.startswith("F\t")]
    stores = [line for line in sent if DEFAULT_PROGRESS_TABLE in line]
    assert len(stores) == 1 and "\tQuery\t" in stores[0] and "COMMIT" in stores[0], sent
    assert await eo.position() == LSN(0x1010)


async def test_a_commit_the_target_refuses_leaves_the_stored_position_for_a_new_process(
    target_dsn: str, target_pool: pool.Pool
) -> None:
    """The position is a row: an aborted COMMIT cannot move it, whatever the process knew.

    A deferred constraint fails at COMMIT.  A *fresh* instance (a restarted
    process, with no memory of that failure) must still read the position
    before it and apply the transaction when it comes again.  (With the
    position kept in the replication origin, PostgreSQL 18 advanced it on the
    abort, and only the failed process's memory could undo that.)
    """
    await execute(
        target_dsn,
        "DROP TABLE IF EXISTS refuse",
        "CREATE TABLE refuse (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)",
        "INSERT INTO refuse VALUES (1)",
    )
    origin = unique("eo")
    first = ExactlyOnce("target", origin)
    async with first.transaction(_batch(0x900)) as conn:
        assert conn is not None
    with pytest.raises(UniqueViolation):
        async with first.transaction(_batch(0x1000, xid=8)) as conn:
            assert conn is not None
            await conn.execute("INSERT INTO refuse VALUES (1)")
    restarted = ExactlyOnce("target", origin)
    assert await restarted.position() == LSN(0x910)
    async with restarted.transaction(_batch(0x1000, xid=8)) as conn:
        assert conn is not None, "the refused transaction was skipped as if applied"
    assert await restarted.position() == LSN(0x1010)
    assert restarted.applied == 1 and restarted.duplicates == 0


async def test_a_commit_stored_by_another_session_is_seen_under_the_row_lock(
    target_pool: pool.Pool,
) -> None:
    """The skip decision is taken again when the row is locked, not from a stale cache.

    ``stale`` read the position before ``other`` committed the same source
    transaction (what a process sees when its COMMIT's answer was lost and it
    asks again): it must skip the transaction, not apply it twice.
    """
    origin = unique("eo")
    stale = ExactlyOnce("target", origin)
    other = ExactlyOnce("target", origin)
    async with stale.transaction(_batch(0x1000)) as conn:
        assert conn is not None
    async with other.transaction(_batch(0x2000)) as conn:
        assert conn is not None
    # stale's last known position is 0/1010: only the locked row says 0/2010.
    async with stale.transaction(_batch(0x2000)) as conn:
        assert conn is None, "applied twice: the decision used the stale position"
    assert stale.duplicates == 1 and stale.applied == 1
    assert await stale.position() == LSN(0x2010)


async def test_a_position_stored_in_the_origin_by_an_earlier_otpy_seeds_the_row(
    target_dsn: str, target_pool: pool.Pool
) -> None:
    origin = unique("eo")
    table = unique("progress")
    await execute(
        target_dsn,
        f"SELECT pg_replication_origin_create('{origin}')",
        f"SELECT pg_replication_origin_advance('{origin}', '0/5000')",
    )
    eo = ExactlyOnce("target", origin, progress_table=f"public.{table}")
    assert await eo.position() == LSN(0x5000)
    async with eo.transaction(_batch(0x4000)) as conn:
        assert conn is None
    rows = await query(target_dsn, f"SELECT origin, position::text FROM {table}")
    assert rows == [(origin, "0/5000")]


@pytest.mark.parametrize("name", ["", "a.b.c", ".t", "s.", 7])
def test_a_bad_progress_table_name_is_refused(name: Any) -> None:
    with pytest.raises(ExactlyOnceError, match="progress_table"):
        ExactlyOnce("target", "o", progress_table=name)


async def test_forget_starts_the_pipeline_afresh_in_the_target(
    target_dsn: str, target_pool: pool.Pool
) -> None:
    origin = unique("eo")
    eo = ExactlyOnce("target", origin)
    async with eo.transaction(_batch(0x3000)) as conn:
        assert conn is not None
    assert await eo.position() == LSN(0x3010)
    await eo.forget()
    origins = await query(
        target_dsn, "SELECT count(*) FROM pg_replication_origin WHERE roname = %s", [origin]
    )
    assert origins == [(0,)]
    assert await ExactlyOnce("target", origin).position() is None
    async with eo.transaction(_batch(0x3000)) as conn:  # applied again: nothing is stored
        assert conn is not None


async def test_a_parked_transaction_is_applied_exactly_once_when_replayed(
    module_dsn: str, target_dsn: str, tables: str, target_pool: pool.Pool, readers: Ref
) -> None:
    """The slot and the stored position are past a parked transaction: a replay must not skip it.

    Replayed twice (a crash between the replay's commit and the removal of
    the dead letter), it is applied once.
    """
    poisoned = True

    def poison(batch: ChangeBatch) -> None:
        if poisoned and any(c.data["v"] == 13 for c in batch if c.op == "insert"):
            raise ValueError("poison")

    copier = Copier("target", unique("eo"), fail_before=poison)
    slot, letters = unique("eo"), unique("dl")
    options = {
        **PERSISTENT,
        "on_failure": {"policy": "park", "max_attempts": 1, "pool": "target", "table": letters},
    }
    ref = await wal_reader.subscribe(copier, module_dsn, slot, [tables], options)
    try:
        await insert_values(module_dsn, [1], [13, 14], [2])
        await copier.wait_for(lambda: len(copier.seen) == 2)
        (letter,) = await dead_letters.list_parked("target", slot=slot, table=letters)
        assert (await counts(module_dsn, target_dsn))["lost"] == 2  # parked, not applied
        poisoned = False
        await dead_letters.replay("target", letter.id, copier, table=letters)
        assert await counts(module_dsn, target_dsn) == {
            "committed": 4,
            "applied": 4,
            "duplicates": 0,
            "lost": 0,
            "unknown": 0,
        }
        await copier.handle_replication_data(letter, letter.batch())  # replayed again
        assert (await counts(module_dsn, target_dsn))["duplicates"] == 0
        assert copier.exactly_once.duplicates >= 1
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)


async def insert_values(dsn: str, *transactions: list[int]) -> None:
    """One source transaction per list of ``v`` values."""
    for values in transactions:
        rows = ", ".join(f"({v})" for v in values)
        await execute(dsn, f"INSERT INTO src (v) VALUES {rows}")


async def test_a_role_without_the_privileges_is_told_what_to_grant(
    target_dsn: str,
) -> None:
    role = unique("eo_role")
    await execute(
        target_dsn,
        f"CREATE ROLE {role} LOGIN",
        f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}",
    )
    database = DatabaseConfig.from_dsn("limited", target_dsn)
    database = attrs.evolve(database, username=role, password=None)
    config = PoolConfig(name="limited", database="limited", min_size=1, max_size=1)
    try:
        async with pool.open_pool("limited", config, database):
            eo = ExactlyOnce("limited", unique("eo"), progress_table=f"public.{unique('t')}")
            with pytest.raises(
                ExactlyOnceError, match=r"may not use replication origins.*grants EXECUTE"
            ):
                await eo.position()
            await execute(
                target_dsn,
                "GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), "
                "pg_replication_origin_oid(text), pg_replication_origin_progress(text, boolean), "
                "pg_replication_origin_session_setup(text), "
                f"pg_replication_origin_session_reset() TO {role}",
            )
            with pytest.raises(ExactlyOnceError, match=r"may not create it.*Privileges"):
                await eo.position()
    finally:
        await execute(target_dsn, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


async def test_a_position_row_deleted_under_a_running_applier_is_written_again(
    target_dsn: str, target_pool: pool.Pool
) -> None:
    origin = unique("eo")
    eo = ExactlyOnce("target", origin)
    async with eo.transaction(_batch(0x6000)) as conn:
        assert conn is not None
    await execute(target_dsn, f"DELETE FROM {DEFAULT_PROGRESS_TABLE} WHERE origin = '{origin}'")
    async with eo.transaction(_batch(0x7000)) as conn:
        assert conn is not None
    assert await ExactlyOnce("target", origin).position() == LSN(0x7010)
