"""What PostgreSQL 16-18 added, used by readers: protocol choice, origin, failover slots.

Each feature runs against the session's real server: on a server that has it
the positive test runs, on an older one the refusal test runs (the suite runs
on PostgreSQL 15 and 18, so both sides are exercised).
"""

from __future__ import annotations

from typing import Any

import pytest
from wr_helpers import Recorder, drop_slot, execute, published_table, query, unique

from otpy import Ref, count_children
from otpy.pg import wal_reader
from otpy.pg.connection import TrioConnection
from otpy.pg.wal_reader import InvalidOptions, ReaderOptions
from otpy.pg.wal_reader.slots import lookup_slot


@pytest.fixture(scope="module")
def items(module_dsn: str) -> str:
    return published_table(module_dsn, "items", "id int PRIMARY KEY, v text")


async def server_version(dsn: str) -> int:
    rows = await query(dsn, "SELECT current_setting('server_version_num')::int")
    return int(rows[0][0])


async def needs(dsn: str, least: int, what: str) -> None:
    if await server_version(dsn) < least:
        pytest.skip(f"{what} needs PostgreSQL {least // 10000}+")


async def older_than(dsn: str, least: int, what: str) -> None:
    if await server_version(dsn) >= least:
        pytest.skip(f"the server has {what} (PostgreSQL {least // 10000}+)")


async def start_command(dsn: str, slot: str) -> str:
    """The START_REPLICATION text the slot's walsender ran (pg_stat_activity keeps it)."""
    rows = await query(
        dsn,
        "SELECT a.query FROM pg_stat_activity a JOIN pg_replication_slots s "
        "ON s.active_pid = a.pid WHERE s.slot_name = %s",
        [slot],
    )
    return str(rows[0][0])


# ------------------------------------------------------------------ protocol version


def test_the_protocol_is_the_highest_the_server_speaks_unless_pinned() -> None:
    auto = ReaderOptions()
    assert auto.proto_version is None
    assert [auto.protocol(v) for v in (130000, 140005, 150004, 160000, 180006)] == [1, 2, 3, 4, 4]
    # Pinned: kept, raised only to what the options need.
    assert ReaderOptions(proto_version=1).protocol(180000) == 1
    assert ReaderOptions(proto_version=1, streaming=True).protocol(180000) == 2
    assert ReaderOptions(proto_version=2, two_phase=True).protocol(180000) == 3
    assert ReaderOptions(proto_version=1, streaming="parallel").protocol(180000) == 4
    assert ReaderOptions(streaming="parallel").plugin_options(160000) == [
        ("proto_version", "4"),
        ("streaming", "parallel"),
    ]
    assert ReaderOptions(two_phase=True, origin="none").plugin_options(150000) == [
        ("proto_version", "3"),
        ("two_phase", "on"),
        ("origin", "none"),
    ]


@pytest.mark.parametrize(
    ("options", "server", "message"),
    [
        ({"streaming": "parallel"}, 150004, r"streaming='parallel' needs PostgreSQL 16"),
        ({"two_phase": True}, 140010, r"two_phase needs PostgreSQL 15"),
        ({"origin": "none"}, 150004, r"origin needs PostgreSQL 16"),
        ({"slot_type": "persistent", "failover": True}, 160004, r"failover needs PostgreSQL 17"),
        ({"proto_version": 4}, 150004, r"protocol 4 needs PostgreSQL 16"),
    ],
)
def test_an_option_the_server_is_too_old_for_is_refused_naming_both_versions(
    options: dict[str, Any], server: int, message: str
) -> None:
    opts = ReaderOptions.coerce(options)
    with pytest.raises(InvalidOptions, match=message) as info:
        opts.check_server(server)
    assert f"{server // 10000}." in str(info.value)
    opts.check_server(180000)  # every option is fine on PostgreSQL 18


@pytest.mark.parametrize(
    ("option", "value"),
    [("streaming", "on"), ("streaming", 1), ("origin", "None"), ("origin", True), ("two_phase", 1)],
)
def test_new_options_refuse_bad_values(option: str, value: Any) -> None:
    with pytest.raises(InvalidOptions, match=option):
        ReaderOptions.coerce({option: value})


def test_a_failover_slot_must_be_persistent() -> None:
    with pytest.raises(InvalidOptions, match="temporary slot cannot fail over"):
        ReaderOptions(failover=True)


async def test_the_reader_asks_for_the_highest_protocol_of_the_server(
    module_dsn: str, items: str, readers: Ref
) -> None:
    version = await server_version(module_dsn)
    expected = ReaderOptions().protocol(version)
    assert expected == (4 if version >= 160000 else 3 if version >= 150000 else 2)
    slot = unique("proto_auto")
    ref = await wal_reader.subscribe(Recorder(), module_dsn, slot, [items])
    try:
        assert f"\"proto_version\" '{expected}'" in await start_command(module_dsn, slot)
    finally:
        await wal_reader.unsubscribe(ref)
    pinned = await wal_reader.subscribe(Recorder(), module_dsn, slot, [items], {"proto_version": 1})
    try:
        assert "\"proto_version\" '1'" in await start_command(module_dsn, slot)
    finally:
        await wal_reader.unsubscribe(pinned)


async def test_parallel_streaming_delivers_like_streaming(
    module_dsn: str, items: str, readers: Ref
) -> None:
    await needs(module_dsn, 160000, "streaming='parallel'")
    slot = unique("par")
    rec = Recorder()
    ref = await wal_reader.subscribe(
        rec, module_dsn, slot, [items], {"streaming": "parallel", "max_batch_size": None}
    )
    try:
        assert "\"streaming\" 'parallel'" in await start_command(module_dsn, slot)
        # Bigger than logical_decoding_work_mem: the server streams it while it runs.
        await execute(
            module_dsn,
            "SET logical_decoding_work_mem = '64kB'",
            "BEGIN",
            "INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(1, 3000) g",
            "COMMIT",
        )
        changes = await rec.wait_changes(3000)
        assert [c.data["id"] for c in changes] == list(range(1, 3001))
        assert len({c.xid for c in changes}) == 1
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, "DELETE FROM items")


# ------------------------------------------------------------------ origin


async def write_under_origin(dsn: str, origin: str, statement: str) -> None:
    """Run ``statement`` in a session that replays as replication origin ``origin``."""
    await execute(
        dsn,
        f"SELECT pg_replication_origin_create('{origin}')",
        f"SELECT pg_replication_origin_session_setup('{origin}')",
        statement,
        "SELECT pg_replication_origin_session_reset()",
        f"SELECT pg_replication_origin_drop('{origin}')",
    )


async def test_origin_none_skips_changes_applied_under_a_replication_origin(
    module_dsn: str, items: str, readers: Ref
) -> None:
    await needs(module_dsn, 160000, "origin")
    none, anything = Recorder(), Recorder()
    ref_none = await wal_reader.subscribe(
        none, module_dsn, unique("orig_none"), [items], {"origin": "none"}
    )
    ref_any = await wal_reader.subscribe(
        anything, module_dsn, unique("orig_any"), [items], {"origin": "any"}
    )
    try:
        await write_under_origin(module_dsn, "peer_a", "INSERT INTO items VALUES (1, 'replayed')")
        await execute(module_dsn, "INSERT INTO items VALUES (2, 'local')")
        await anything.wait_changes(2)
        # The local insert, committed after the replayed one, reached both readers:
        # the origin-none reader has seen (and skipped) the replayed one by then.
        await none.wait_changes(1)
        assert [c.data["id"] for c in anything.changes] == [1, 2]
        assert [c.data["id"] for c in none.changes] == [2]
    finally:
        await wal_reader.unsubscribe(ref_none)
        await wal_reader.unsubscribe(ref_any)
        await execute(module_dsn, "DELETE FROM items")


async def test_origin_is_refused_before_postgresql_16(
    module_dsn: str, items: str, readers: Ref
) -> None:
    await older_than(module_dsn, 160000, "origin")
    with pytest.raises(InvalidOptions, match="origin needs PostgreSQL 16"):
        await wal_reader.subscribe(
            Recorder(), module_dsn, unique("orig_old"), [items], {"origin": "none"}
        )
    assert (await count_children(readers)).specs == 0


# ------------------------------------------------------------------ failover slots


async def slot_failover(dsn: str, slot: str) -> bool:
    rows = await query(
        dsn, "SELECT failover FROM pg_replication_slots WHERE slot_name = %s", [slot]
    )
    return bool(rows[0][0])


async def test_failover_creates_a_failover_slot_and_marks_an_existing_one(
    module_dsn: str, items: str, readers: Ref
) -> None:
    await needs(module_dsn, 170000, "failover slots")
    opts = {"slot_type": "persistent", "failover": True}
    created, existing = unique("fo_new"), unique("fo_old")
    await execute(
        module_dsn, f"SELECT pg_create_logical_replication_slot('{existing}', 'pgoutput')"
    )
    assert not await slot_failover(module_dsn, existing)
    try:
        for slot in (created, existing):
            rec = Recorder()
            ref = await wal_reader.subscribe(rec, module_dsn, slot, [items], opts)
            try:
                assert await slot_failover(module_dsn, slot)
                await execute(module_dsn, "INSERT INTO items VALUES (7, 'x')")
                assert (await rec.wait_changes(1))[0].data["id"] == 7
            finally:
                await wal_reader.unsubscribe(ref)
                await execute(module_dsn, "DELETE FROM items")
        info = await wal_reader_slot(module_dsn, created)
        assert info.failover is True and info.synced is False
    finally:
        drop_slot(module_dsn, created)
        drop_slot(module_dsn, existing)


async def wal_reader_slot(dsn: str, slot: str) -> Any:
    async with await TrioConnection.connect(dsn, autocommit=True) as conn:
        return await lookup_slot(conn, slot)


async def test_failover_is_refused_before_postgresql_17(
    module_dsn: str, items: str, readers: Ref
) -> None:
    await older_than(module_dsn, 170000, "failover slots")
    slot = unique("fo_old_server")
    with pytest.raises(InvalidOptions, match="failover needs PostgreSQL 17"):
        await wal_reader.subscribe(
            Recorder(), module_dsn, slot, [items], {"slot_type": "persistent", "failover": True}
        )
    assert (
        await query(module_dsn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot])
        == []
    )
    assert (await count_children(readers)).specs == 0
