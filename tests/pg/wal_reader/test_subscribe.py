"""The WAL reader against the real server: subscribe, every operation, stop, errors."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import gc
import logging
import uuid
from typing import Any

import pytest
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from wr_helpers import (
    FAST_BACKOFF,
    Recorder,
    create_publication,
    drop_slot_when_free,
    execute,
    query,
    unique,
    walsender_pid,
)

from otpy import Ref
from otpy.pg import wal_reader
from otpy.pg.copy_both import replication_connect, start_copy_both
from otpy.pg.wal_reader import (
    UNCHANGED_TOAST,
    AlreadySubscribed,
    Change,
    InvalidName,
    InvalidOptions,
    PublicationMissing,
    SlotInUse,
)

START = "START_REPLICATION SLOT {slot} LOGICAL 0/0 (proto_version '1', publication_names '{pub}')"


def _plain(row: Any) -> Any:
    """Enum values (the user type ``mood``) as their labels, for comparisons."""
    if not isinstance(row, dict):
        return row
    return {k: v.name if isinstance(v, enum.Enum) else v for k, v in row.items()}


@pytest.fixture(scope="module")
def tables(module_dsn: str) -> str:
    """Tables under each replica identity, and a publication for all of them."""
    import psycopg

    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, name text, mood mood)")
        conn.execute("CREATE TABLE full_t (id int PRIMARY KEY, name text, big text)")
        conn.execute("ALTER TABLE full_t REPLICA IDENTITY FULL")
        conn.execute("CREATE TABLE idx_t (id int NOT NULL, code text NOT NULL, v int)")
        conn.execute("CREATE UNIQUE INDEX idx_t_code ON idx_t (code)")
        conn.execute("ALTER TABLE idx_t REPLICA IDENTITY USING INDEX idx_t_code")
        conn.execute("CREATE TABLE toast_t (id int PRIMARY KEY, big text, n int)")
        conn.execute("ALTER TABLE toast_t ALTER COLUMN big SET STORAGE EXTERNAL")
        conn.execute(
            "CREATE TABLE typed (id int PRIMARY KEY, i8 bigint, f float8, num numeric, "
            "b bool, ts timestamptz, d date, j jsonb, u uuid, arr int[], by bytea, m mood)"
        )
        conn.execute("CREATE TABLE other (id int PRIMARY KEY)")
    create_publication(module_dsn, "pub_all", ["users", "full_t", "idx_t", "toast_t", "typed"])
    return "pub_all"


async def test_every_operation_kind(module_dsn: str, tables: str, readers: Ref) -> None:
    rec = Recorder()
    slot = unique("ops")
    ref = await wal_reader.subscribe(
        rec, module_dsn, slot, [tables], {"slot_type": "temporary", "messages": True}
    )
    try:
        await execute(
            module_dsn,
            "INSERT INTO users VALUES (1, 'ann', 'ok')",
            "UPDATE users SET name = 'anna' WHERE id = 1",
            "UPDATE users SET id = 2 WHERE id = 1",
            "DELETE FROM users WHERE id = 2",
            "INSERT INTO full_t VALUES (1, 'x', 'y')",
            "UPDATE full_t SET name = 'z' WHERE id = 1",
            "DELETE FROM full_t WHERE id = 1",
            "INSERT INTO idx_t VALUES (1, 'a', 10)",
            "UPDATE idx_t SET v = 11 WHERE code = 'a'",
            "UPDATE idx_t SET code = 'b' WHERE code = 'a'",
            "DELETE FROM idx_t WHERE code = 'b'",
            "SELECT pg_logical_emit_message(true, 'pfx', 'hello')",
            "TRUNCATE users, full_t",
            "INSERT INTO other VALUES (1)",  # not published
        )
        changes = await rec.wait_changes(14)
    finally:
        await wal_reader.unsubscribe(ref)
    rows = [(c.table, c.op, _plain(c.data), c.old) for c in changes]
    assert isinstance(changes[0].data["mood"], enum.Enum)  # the user enum was fetched
    assert rows[:4] == [
        ("users", "insert", {"id": 1, "name": "ann", "mood": "ok"}, None),
        ("users", "update", {"id": 1, "name": "anna", "mood": "ok"}, None),
        ("users", "update", {"id": 2, "name": "anna", "mood": "ok"}, {"id": 1}),
        ("users", "delete", {"id": 2, "name": None, "mood": None}, None),
    ]
    assert rows[4:7] == [
        ("full_t", "insert", {"id": 1, "name": "x", "big": "y"}, None),
        (
            "full_t",
            "update",
            {"id": 1, "name": "z", "big": "y"},
            {"id": 1, "name": "x", "big": "y"},
        ),
        ("full_t", "delete", {"id": 1, "name": "z", "big": "y"}, None),
    ]
    assert rows[7:11] == [
        ("idx_t", "insert", {"id": 1, "code": "a", "v": 10}, None),
        ("idx_t", "update", {"id": 1, "code": "a", "v": 11}, None),
        ("idx_t", "update", {"id": 1, "code": "b", "v": 11}, {"code": "a"}),
        ("idx_t", "delete", {"id": None, "code": "b", "v": None}, None),
    ]
    message = changes[11]
    assert (message.table, message.op, message.data) == ("pfx", "message", b"hello")
    assert message.detail == {"transactional": True}
    truncates = changes[12:14]
    assert {(c.table, c.op) for c in truncates} == {("users", "truncate"), ("full_t", "truncate")}
    assert truncates[0].xid == truncates[1].xid
    assert len(changes) == 14
    match changes[0]:
        case Change("users", "insert", {"name": name}, None):
            assert name == "ann"
        case _:
            pytest.fail("Change does not match positionally like the Erlang tuple")
    first = changes[0]
    assert first.schema == "public" and first.xid is not None
    assert first.commit_time is not None and first.lsn <= first.commit_lsn
    assert rec.stops == [slot]


async def test_one_transaction_two_statements_is_one_callback(
    module_dsn: str, tables: str, readers: Ref
) -> None:
    rec = Recorder()
    ref = await wal_reader.subscribe(rec, module_dsn, unique("two"), [tables])
    try:
        await execute(
            module_dsn,
            "BEGIN; INSERT INTO users VALUES (10, 'a', 'sad'); "
            "UPDATE users SET name = 'b' WHERE id = 10; COMMIT",
        )
        await rec.wait_for(lambda: len(rec.batches) >= 1)
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, "DELETE FROM users")
    batch = rec.batches[0]
    assert [(c.op, c.data["name"]) for c in batch] == [("insert", "a"), ("update", "b")]
    assert batch.final and batch.chunk == 0 and batch.xid == batch[0].xid
    assert batch.end_lsn > batch.commit_lsn


async def test_types_text_and_binary(module_dsn: str, tables: str, readers: Ref) -> None:
    expected = {
        "id": 1,
        "i8": 2**40,
        "f": 1.5,
        "num": decimal.Decimal("12.340"),
        "b": True,
        "ts": dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
        "d": dt.date(2024, 5, 6),
        "j": {"a": [1, None]},
        "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "arr": [1, 2, None],
        "by": b"\x00\xff",
        "m": "happy",
    }
    for binary in (False, True):
        rec = Recorder()
        ref = await wal_reader.subscribe(
            rec, module_dsn, unique("types"), [tables], {"binary": binary}
        )
        try:
            await execute(
                module_dsn,
                "INSERT INTO typed VALUES (1, 1099511627776, 1.5, 12.340, true, "
                "'2024-05-06 07:08:09+00', '2024-05-06', '{\"a\": [1, null]}', "
                "'12345678-1234-5678-1234-567812345678', '{1,2,NULL}', '\\x00ff', 'happy')",
                "DELETE FROM typed",
            )
            changes = await rec.wait_changes(2)
        finally:
            await wal_reader.unsubscribe(ref)
        assert _plain(changes[0].data) == expected, binary


async def test_unchanged_toast_is_filled_or_marked(
    module_dsn: str, tables: str, readers: Ref
) -> None:
    big = "x" * 100_000
    rec = Recorder()
    ref = await wal_reader.subscribe(rec, module_dsn, unique("toast"), [tables])
    try:
        await execute(
            module_dsn,
            f"INSERT INTO toast_t VALUES (1, '{big}', 0)",
            "UPDATE toast_t SET n = 1 WHERE id = 1",
            f"INSERT INTO full_t VALUES (7, 'a', '{big}')",
            "UPDATE full_t SET name = 'b' WHERE id = 7",
        )
        changes = await rec.wait_changes(4)
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, "DELETE FROM toast_t", "DELETE FROM full_t")
    assert changes[1].data == {"id": 1, "big": UNCHANGED_TOAST, "n": 1}
    assert changes[1].old is None
    # REPLICA IDENTITY FULL: the old row is there, the unchanged value is filled from it.
    assert changes[3].data == {"id": 7, "name": "b", "big": big}


async def test_stop_callback_when_walsender_is_killed_then_restart(
    module_dsn: str, tables: str, readers: Ref
) -> None:
    rec = Recorder()
    slot = unique("kill")
    ref = await wal_reader.subscribe(
        rec, module_dsn, slot, [tables], {"restart_backoff": FAST_BACKOFF}
    )
    try:
        first = ref.reader()
        pid = await walsender_pid(module_dsn, slot)
        assert pid is not None
        await execute(module_dsn, f"SELECT pg_terminate_backend({pid})")
        await rec.wait_for(lambda: rec.stops == [slot])
        # Restarted by the supervisor: the temporary slot is created again.
        with trio.fail_after(15):
            await ref.wait_streaming(2)
        assert ref.reader() is not first
        await execute(module_dsn, "INSERT INTO users VALUES (20, 'after', 'ok')")
        changes = await rec.wait_changes(1)
        assert changes[0].data["id"] == 20
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, "DELETE FROM users")
    assert rec.stops == [slot, slot]
    # Re-subscribing the same temporary slot works at once after unsubscribe.
    rec2 = Recorder()
    ref2 = await wal_reader.subscribe(rec2, module_dsn, slot, [tables])
    try:
        await execute(module_dsn, "INSERT INTO users VALUES (21, 'again', 'ok')")
        assert (await rec2.wait_changes(1))[0].data["id"] == 21
    finally:
        await wal_reader.unsubscribe(ref2)
        await execute(module_dsn, "DELETE FROM users")


async def test_persistent_slot_redelivers_after_resubscribe(
    module_dsn: str, tables: str, readers: Ref
) -> None:
    slot = unique("persist")
    opts = {"slot_type": "persistent"}
    rec = Recorder()
    ref = await wal_reader.subscribe(rec, module_dsn, slot, [tables], opts)
    try:
        await execute(module_dsn, "INSERT INTO full_t VALUES (1, 'a', 'x')")
        await rec.wait_changes(1)
        await wal_reader.unsubscribe(ref)
        await execute(
            module_dsn,
            "UPDATE full_t SET name = 'b' WHERE id = 1",
            "UPDATE full_t SET name = 'c' WHERE id = 1",
            "INSERT INTO full_t VALUES (2, 'd', 'y')",
            "DELETE FROM full_t WHERE id = 1",
        )
        rec2 = Recorder()
        ref = await wal_reader.subscribe(rec2, module_dsn, slot, [tables], opts)
        await rec2.wait_for(lambda: len(rec2.batches) >= 4)
        assert rec2.rows == [
            (
                "full_t",
                "update",
                {"id": 1, "name": "b", "big": "x"},
                {"id": 1, "name": "a", "big": "x"},
            ),
            (
                "full_t",
                "update",
                {"id": 1, "name": "c", "big": "x"},
                {"id": 1, "name": "b", "big": "x"},
            ),
            ("full_t", "insert", {"id": 2, "name": "d", "big": "y"}, None),
            ("full_t", "delete", {"id": 1, "name": "c", "big": "x"}, None),
        ]
        assert [len(b) for b in rec2.batches] == [1, 1, 1, 1]
        ends = [b.end_lsn for b in rec2.batches]
        assert ends == sorted(ends)
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(
            module_dsn, "DELETE FROM full_t", f"SELECT pg_drop_replication_slot('{slot}')"
        )


async def test_raising_handler_gets_the_transaction_again(
    module_dsn: str, tables: str, readers: Ref
) -> None:
    failures = []

    def fail(batch: Any) -> None:
        if any(c.data and c.data.get("name") == "boom" for c in batch) and len(failures) < 2:
            failures.append(batch.xid)
            raise RuntimeError("handler failed")

    rec = Recorder(fail)
    slot = unique("raise")
    ref = await wal_reader.subscribe(
        rec,
        module_dsn,
        slot,
        [tables],
        {"slot_type": "persistent", "restart_backoff": FAST_BACKOFF},
    )
    try:
        await execute(
            module_dsn,
            "INSERT INTO users VALUES (30, 'ok1', 'ok')",
            "INSERT INTO users VALUES (31, 'boom', 'ok')",
            "INSERT INTO users VALUES (32, 'ok2', 'ok')",
        )
        await rec.wait_changes(3)
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, "DELETE FROM users", f"SELECT pg_drop_replication_slot('{slot}')")
    assert [c.data["id"] for c in rec.changes] == [30, 31, 32]
    assert len(failures) == 2 and failures[0] == failures[1] == rec.batches[1].xid
    assert rec.stops == [slot] * 3


async def test_chunks_of_a_large_transaction(module_dsn: str, tables: str, readers: Ref) -> None:
    attempts = []

    def fail(batch: Any) -> None:
        attempts.append((batch.chunk, batch.final))
        if batch.chunk == 2 and len(attempts) < 4:
            raise RuntimeError("fail in the middle of a chunked transaction")

    rec = Recorder(fail)
    slot = unique("chunks")
    ref = await wal_reader.subscribe(
        rec,
        module_dsn,
        slot,
        [tables],
        {"slot_type": "persistent", "max_batch_size": 3, "restart_backoff": FAST_BACKOFF},
    )
    try:
        await execute(
            module_dsn, "INSERT INTO users SELECT g, 'n', 'ok' FROM generate_series(100, 109) g"
        )
        await rec.wait_for(lambda: any(b.final for b in rec.batches))
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, "DELETE FROM users", f"SELECT pg_drop_replication_slot('{slot}')")
    # First delivery failed at chunk 2: nothing was acknowledged, all chunks came again.
    assert attempts == [
        (0, False),
        (1, False),
        (2, False),
        (0, False),
        (1, False),
        (2, False),
        (3, True),
    ]
    assert [len(b) for b in rec.batches] == [3, 3, 3, 3, 3, 1]
    ids = [c.data["id"] for b in rec.batches[2:] for c in b]
    assert ids == list(range(100, 110))


async def test_bad_names_and_options(module_dsn: str, tables: str, readers: Ref) -> None:
    rec = Recorder()
    for bad in ("Upper", "with space", "x" * 64, "", "a;drop"):
        with pytest.raises(InvalidName):
            await wal_reader.subscribe(rec, module_dsn, bad, [tables])
    with pytest.raises(InvalidName):
        await wal_reader.subscribe(rec, module_dsn, "ok_slot", ["x" * 64])
    with pytest.raises(InvalidOptions, match="did you mean 'slot_type'"):
        await wal_reader.subscribe(rec, module_dsn, "ok_slot", [tables], {"slot_typ": "temporary"})
    with pytest.raises(InvalidOptions, match="slot_type"):
        await wal_reader.subscribe(rec, module_dsn, "ok_slot", [tables], {"slot_type": "forever"})
    # A publication name needing quotes is quoted, not injected.
    with pytest.raises(PublicationMissing, match='no"such'):
        await wal_reader.subscribe(rec, module_dsn, "ok_slot", ['no"such', tables])
    assert rec.stops == []
    rows = await query(module_dsn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'ok_slot'")
    assert rows == []


async def test_create_publication_option(module_dsn: str, tables: str, readers: Ref) -> None:
    rec = Recorder()
    pub = unique("made_pub")
    ref = await wal_reader.subscribe(
        rec, module_dsn, unique("mk"), [pub], {"create_publication": ["other"]}
    )
    try:
        await execute(module_dsn, "INSERT INTO other VALUES (77)")
        assert (await rec.wait_changes(1))[0].data == {"id": 77}
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, "DELETE FROM other", f'DROP PUBLICATION "{pub}"')


async def test_already_subscribed_and_slot_in_use(
    module_dsn: str, tables: str, readers: Ref
) -> None:
    slot = unique("busy")
    rec = Recorder()
    ref = await wal_reader.subscribe(rec, module_dsn, slot, [tables], {"slot_type": "persistent"})
    try:
        with pytest.raises(AlreadySubscribed) as info:
            await wal_reader.subscribe(Recorder(), module_dsn, slot, [tables])
        assert info.value.subscription is ref
    finally:
        await wal_reader.unsubscribe(ref)
    # Another session streams from the slot: a clear error naming its PID.
    async with await replication_connect(module_dsn) as other:
        await start_copy_both(
            other,
            START.format(slot=slot, pub=tables),
        )
        with pytest.raises(SlotInUse, match="active for PostgreSQL backend PID"):
            await wal_reader.subscribe(
                Recorder(), module_dsn, slot, [tables], {"slot_type": "persistent"}
            )
    # The other session's walsender exits after its client is gone, not with it.
    await drop_slot_when_free(module_dsn, slot)


async def test_a_slot_is_known_by_the_server_libpq_connects_to(
    module_dsn: str, tables: str, readers: Ref, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same slot reached through PGHOST/PGPORT is the same subscription, not a stranger."""
    params = conninfo_to_dict(module_dsn)
    monkeypatch.setenv("PGHOST", str(params.pop("host")))
    monkeypatch.setenv("PGPORT", str(params.pop("port")))
    slot = unique("envkey")
    ref = await wal_reader.subscribe(Recorder(), module_dsn, slot, [tables])
    try:
        with pytest.raises(AlreadySubscribed) as info:
            await wal_reader.subscribe(Recorder(), make_conninfo("", **params), slot, [tables])
        assert info.value.subscription is ref
    finally:
        await wal_reader.unsubscribe(ref)


async def test_standby_takes_over_when_the_slot_is_freed(
    module_dsn: str, tables: str, readers: Ref
) -> None:
    slot = unique("standby")
    opts = {"slot_type": "persistent", "standby": True, "restart_backoff": FAST_BACKOFF}
    await execute(module_dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    rec = Recorder()
    other = await replication_connect(module_dsn)
    await start_copy_both(
        other,
        START.format(slot=slot, pub=tables),
    )
    ref = await wal_reader.subscribe(rec, module_dsn, slot, [tables], opts)
    try:
        await execute(module_dsn, "INSERT INTO users VALUES (40, 'during', 'ok')")
        await other.close()
        # The standby takes over and gets the change the other reader never acknowledged.
        changes = await rec.wait_changes(1)
        assert changes[0].data["id"] == 40
        assert await walsender_pid(module_dsn, slot) is not None
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, "DELETE FROM users", f"SELECT pg_drop_replication_slot('{slot}')")


async def test_unsubscribe_while_standing_by(module_dsn: str, tables: str, readers: Ref) -> None:
    slot = unique("standby_stop")
    await execute(module_dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    rec = Recorder()
    async with await replication_connect(module_dsn) as other:
        await start_copy_both(other, START.format(slot=slot, pub=tables))
        holder = await walsender_pid(module_dsn, slot)
        ref = await wal_reader.subscribe(
            rec, module_dsn, slot, [tables], {"slot_type": "persistent", "standby": True}
        )
        assert ref.reader() is not None and not ref.state.streaming
        with trio.fail_after(15):
            await wal_reader.unsubscribe(ref)
        # The standby never streamed: no stop callback; the other session still holds the slot.
        assert rec.stops == [] and ref.reader() is None
        assert await walsender_pid(module_dsn, slot) == holder
    await drop_slot_when_free(module_dsn, slot)


async def test_restarts_back_off_exponentially_up_to_the_cap(
    module_dsn: str, tables: str, readers: Ref, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []

    def fail(batch: Any) -> None:
        attempts.append(batch.xid)
        if len(attempts) <= 4:
            raise RuntimeError("not yet")

    rec = Recorder(fail)
    slot = unique("backoff")
    backoff = {"initial": 0.02, "maximum": 0.08, "reset_after": 60}
    caplog.set_level(logging.INFO, logger="otpy.supervisor")
    ref = await wal_reader.subscribe(
        rec, module_dsn, slot, [tables], {"slot_type": "persistent", "restart_backoff": backoff}
    )
    try:
        await execute(module_dsn, "INSERT INTO users VALUES (60, 'retry', 'ok')")
        await rec.wait_changes(1)
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, "DELETE FROM users", f"SELECT pg_drop_replication_slot('{slot}')")
    delays = [
        r.delay  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "event", None) == "child_restart_scheduled"
    ]
    assert delays == pytest.approx([0.02, 0.04, 0.08, 0.08])
    assert len(set(attempts)) == 1 and len(attempts) == 5  # the same transaction each time
    assert len(rec.stops) == 5


async def test_a_killed_reader_lets_go_of_its_slot(
    module_dsn: str, tables: str, readers: Ref
) -> None:
    rec = Recorder()
    slot = unique("killed")
    ref = await wal_reader.subscribe(
        rec,
        module_dsn,
        slot,
        [tables],
        {"slot_type": "persistent", "restart_backoff": FAST_BACKOFF},
    )
    gc.disable()  # no garbage collector to close a leaked connection behind our back
    try:
        for round_ in range(5):
            starts = ref.state.starts
            reader = ref.reader()
            assert reader is not None
            for _ in range(round_):  # kill at different points of the stream's start
                await trio.lowlevel.checkpoint()
            reader.kill()  # no terminate runs: the sockets must still be closed
            with trio.fail_after(15):
                await ref.wait_streaming(starts + 1)
        await execute(module_dsn, "INSERT INTO users VALUES (70, 'alive', 'ok')")
        assert (await rec.wait_changes(1))[0].data["id"] == 70
    finally:
        gc.enable()
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, "DELETE FROM users")
        await drop_slot_when_free(module_dsn, slot)


async def test_killed_while_the_handler_raises_still_lets_go_of_the_slot(
    module_dsn: str, tables: str, readers: Ref
) -> None:
    # The runtime skips terminate for a killed actor, even when a task crashed at
    # the same moment: the stream itself must close its sockets then.
    holder: list[Any] = []

    def kill_and_fail(batch: Any) -> None:
        if len(holder) == 1:
            holder.append(batch)
            reader = holder[0].reader()
            reader.kill()
            raise RuntimeError("handler failed while its reader was being killed")

    rec = Recorder(kill_and_fail)
    slot = unique("killfail")
    gc.disable()
    ref = await wal_reader.subscribe(
        rec,
        module_dsn,
        slot,
        [tables],
        {"slot_type": "persistent", "restart_backoff": FAST_BACKOFF},
    )
    holder.append(ref)
    try:
        await execute(module_dsn, "INSERT INTO users VALUES (80, 'a', 'ok')")
        with trio.fail_after(15):
            await ref.wait_streaming(2)
        assert (await rec.wait_changes(1))[0].data["id"] == 80  # redelivered after the restart
    finally:
        gc.enable()
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, "DELETE FROM users")
        await drop_slot_when_free(module_dsn, slot)


async def test_the_decoder_build_is_logged_once_per_process(
    module_dsn: str, tables: str, readers: Ref, caplog: pytest.LogCaptureFixture
) -> None:
    # Operators reading why a reader falls behind should see whether pgoutput
    # is decoded by the compiled module or interpreted (about 2x slower).
    from otpy.pg.replication import is_compiled
    from otpy.pg.wal_reader.reader import _log_decoder_build

    _log_decoder_build.cache_clear()
    caplog.set_level(logging.DEBUG, logger="otpy.pg.wal_reader")
    refs = [
        await wal_reader.subscribe(
            Recorder(), module_dsn, unique("build"), [tables], {"slot_type": "temporary"}
        )
        for _ in range(2)
    ]
    for ref in refs:
        await wal_reader.unsubscribe(ref)
    records = [r for r in caplog.records if getattr(r, "event", None) == "replication_decoder"]
    assert len(records) == 1
    assert records[0].compiled is is_compiled()  # type: ignore[attr-defined]
    assert ("compiled by mypyc" in records[0].getMessage()) is is_compiled()
