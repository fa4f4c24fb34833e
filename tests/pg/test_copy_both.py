"""Replication mode on trio: walsender commands and a COPY_BOTH round trip.

Runs in a database of its own (``module_dsn``) so its publication and slots
see no other test's writes.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import trio
import trio.testing
from psycopg import sql

from otpy.pg.connection import TrioConnection
from otpy.pg.copy_both import (
    REPLICATION_SESSION_SETTINGS,
    replication_connect,
    send_copy_data,
    start_copy_both,
    wait_copy_data,
)
from otpy.pg.errors import ConnectionClosedError, ReplicationProtocolError


def _standby_status(lsn: int, reply: bool = False) -> bytes:
    """A client 'r' frame acknowledging ``lsn`` as written, flushed and applied.

    The send time (microseconds since 2000-01-01) only feeds the server's lag
    statistics, so 0 will do here.
    """
    return struct.pack("!cQQQqB", b"r", lsn, lsn, lsn, 0, int(reply))


@pytest.fixture
async def plain(module_dsn: str) -> AsyncIterator[TrioConnection[Any]]:
    async with await TrioConnection.connect(module_dsn, autocommit=True) as c:
        await c.execute("CREATE TABLE IF NOT EXISTS repl_items (id int PRIMARY KEY, v text)")
        await c.execute(
            "DO $$ BEGIN CREATE PUBLICATION repl_pub FOR TABLE repl_items; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        yield c


@pytest.fixture
async def repl(module_dsn: str) -> AsyncIterator[TrioConnection[Any]]:
    async with await replication_connect(module_dsn) as c:
        yield c


async def _start(repl: TrioConnection[Any], slot: str) -> int:
    """Create a temporary pgoutput slot and start streaming from it; return its LSN."""
    cur = await repl.execute(
        sql.SQL("CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput").format(
            sql.Identifier(slot)
        )
    )
    row = await cur.fetchone()
    assert row is not None and row[0] == slot
    high, low = row[1].split("/")
    await start_copy_both(
        repl,
        sql.SQL("START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '1', publication_names {})")
        .format(sql.Identifier(slot), sql.Literal("repl_pub"))
        .as_string(repl),
    )
    return (int(high, 16) << 32) | int(low, 16)


async def test_walsender_commands_use_the_simple_protocol(
    repl: TrioConnection[Any], module_dsn: str
) -> None:
    cur = await repl.execute("IDENTIFY_SYSTEM")
    row = await cur.fetchone()
    assert row is not None
    systemid, timeline, xlogpos, dbname = row
    assert int(systemid) > 0 and timeline >= 1 and "/" in xlogpos
    assert dbname == psycopg.conninfo.conninfo_to_dict(module_dsn)["dbname"]
    # The same command many times: no prepared statement (the walsender has none).
    for _ in range(8):
        await repl.execute("IDENTIFY_SYSTEM")
    assert repl.autocommit and repl.prepare_threshold is None


async def test_session_settings_are_pinned(module_dsn: str) -> None:
    # Even when the caller asks for something else, the pinned values win.
    async with await replication_connect(
        module_dsn, options="-c TimeZone=Asia/Kolkata -c application_name=walreader"
    ) as c:
        for name, value in REPLICATION_SESSION_SETTINGS.items():
            cur = await c.execute(sql.SQL("SHOW {}").format(sql.Identifier(name.lower())))
            shown = await cur.fetchone()
            assert shown is not None
            assert shown[0].replace(" ", "") == value, name
        cur = await c.execute("SHOW application_name")
        assert await cur.fetchone() == ("walreader",)


async def test_start_replication_and_receive_frames(
    plain: TrioConnection[Any], repl: TrioConnection[Any]
) -> None:
    start_lsn = await _start(repl, "otpy_conn_roundtrip")
    await plain.execute("INSERT INTO repl_items VALUES (1, 'hello')")
    kinds: list[bytes] = []
    payload_kinds: list[bytes] = []
    with trio.fail_after(20):
        while b"C" not in payload_kinds:  # until the transaction's Commit arrives
            frame = await wait_copy_data(repl)
            assert frame is not None
            kinds.append(frame[:1])
            if frame[:1] == b"w":
                # XLogData: 'w', start, end, send time (3 x int64), then pgoutput.
                assert len(frame) > 25
                payload_kinds.append(frame[25:26])
            elif frame[:1] == b"k":
                (end_lsn,) = struct.unpack_from("!Q", frame, 1)
                assert end_lsn >= start_lsn
            else:  # pragma: no cover - the walsender sends only w and k
                pytest.fail(f"unexpected frame {frame[:1]!r}")
    # Begin, Relation, Insert, Commit, in this order, as pgoutput sends them.
    assert payload_kinds == [b"B", b"R", b"I", b"C"]
    # Acknowledge, then the session is still healthy (a keepalive round trip).
    await send_copy_data(repl, _standby_status(start_lsn))
    await send_copy_data(repl, _standby_status(start_lsn, reply=True))
    with trio.fail_after(20):
        while True:
            frame = await wait_copy_data(repl)
            assert frame is not None
            if frame[:1] == b"k":
                break


async def test_sender_and_receiver_tasks_share_the_stream(
    plain: TrioConnection[Any], repl: TrioConnection[Any]
) -> None:
    start_lsn = await _start(repl, "otpy_conn_two_tasks")
    received = trio.Event()

    async def receive() -> None:
        while True:
            frame = await wait_copy_data(repl)
            assert frame is not None
            if frame[:1] == b"w" and frame[25:26] == b"I":
                received.set()
                return

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()  # the receiver waits for data
            await send_copy_data(repl, _standby_status(start_lsn))  # while it waits
            await plain.execute("INSERT INTO repl_items VALUES (2, 'two')")
            await received.wait()


async def test_terminated_walsender_ends_the_stream_with_an_error(
    plain: TrioConnection[Any], repl: TrioConnection[Any]
) -> None:
    await _start(repl, "otpy_conn_terminated")
    await plain.execute("SELECT pg_terminate_backend(%s)", (repl.info.backend_pid,))
    with trio.fail_after(20), pytest.raises(psycopg.OperationalError) as info:
        while await wait_copy_data(repl) is not None:
            pass
    assert "terminat" in str(info.value) or "lost" in str(info.value)
    with pytest.raises(ConnectionClosedError):
        await wait_copy_data(repl)


async def test_closing_wakes_the_receiver(repl: TrioConnection[Any]) -> None:
    await _start(repl, "otpy_conn_closing")
    caught: list[Exception] = []

    async def receive() -> None:
        try:
            while True:
                await wait_copy_data(repl)
        except ConnectionClosedError as exc:
            caught.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            await repl.close()
    assert len(caught) == 1
    with pytest.raises(ConnectionClosedError):
        await send_copy_data(repl, _standby_status(0))


async def test_copy_helpers_refuse_a_connection_that_is_not_streaming(
    repl: TrioConnection[Any],
) -> None:
    with pytest.raises(ReplicationProtocolError, match="START_REPLICATION"):
        await wait_copy_data(repl)
    with pytest.raises(ReplicationProtocolError, match="COPY_BOTH"):
        await start_copy_both(repl, "IDENTIFY_SYSTEM")
    with pytest.raises(psycopg.errors.UndefinedObject):
        await start_copy_both(repl, 'START_REPLICATION SLOT "no_such_slot" LOGICAL 0/0')
    # Still usable for commands afterwards.
    assert (await (await repl.execute("IDENTIFY_SYSTEM")).fetchone()) is not None
