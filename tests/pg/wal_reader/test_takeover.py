"""A standby reader takes a slot over about a second after its active reader dies.

The active reader runs in another process (``reader_proc.py``) and is killed
with SIGKILL: its sockets close, its sessions end, the slot and the advisory
lock it held are freed.  The standby, in this process, was waiting long
enough for a polling back-off to have grown; it must deliver the next
committed transaction within a second of the kill.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio
from test_process_kill import spawn
from wr_helpers import Recorder, drop_slot_when_free, execute, published_table, unique

from otpy import Ref
from otpy.pg import wal_reader
from otpy.pg.connection import TrioConnection
from otpy.pg.copy_both import replication_connect, start_copy_both
from otpy.pg.wal_reader.stream import SLOT_LOCK_CLASS, TAKEOVER_POLL

#: What the issue asks: the standby delivers within a second of the slot being freed.
TAKEOVER_TARGET = 1.0


@pytest.fixture(scope="module")
def tk(module_dsn: str) -> str:
    return published_table(module_dsn, "tk", "id bigserial PRIMARY KEY, v int")


async def test_a_standby_delivers_within_a_second_of_the_active_reader_being_killed(
    module_dsn: str, tk: str, readers: Ref, tmp_path: Path
) -> None:
    slot = unique("takeover")
    active = await spawn(module_dsn, slot, tk, tmp_path / "active.txt")
    rec = Recorder()
    # A back-off that would make a polling standby try again only seconds later.
    opts = {
        "slot_type": "persistent",
        "standby": True,
        "restart_backoff": {"initial": 3.0, "maximum": 30.0},
    }
    ref = await wal_reader.subscribe(rec, module_dsn, slot, [tk], opts)
    try:
        assert not ref.state.streaming
        await execute(module_dsn, "INSERT INTO tk (v) VALUES (1)")
        with trio.fail_after(15):
            while await active.line() != b"batch":
                pass
        assert rec.changes == []  # the active reader has it, the standby waits
        killed = trio.current_time()
        active.process.send_signal(signal.SIGKILL)
        await execute(module_dsn, "INSERT INTO tk (v) VALUES (2)")
        await rec.wait_for(lambda: any(c.data["v"] == 2 for c in rec.changes), within=15)
        took = trio.current_time() - killed
        print(f"standby takeover: delivered {took * 1000:.0f} ms after SIGKILL")
        assert took <= TAKEOVER_TARGET, f"took {took:.2f} s"
        assert ref.state.streaming and ref.state.starts == 1
    finally:
        with trio.CancelScope(shield=True):
            await wal_reader.unsubscribe(ref)
            if active.process.returncode is None:
                active.process.kill()
            await active.process.wait()
            await drop_slot_when_free(module_dsn, slot)


async def test_a_standby_queued_behind_another_takes_over_when_the_slot_is_freed(
    module_dsn: str, tk: str, readers: Ref
) -> None:
    # A holder that does not take the advisory lock (here: a plain replication
    # session): the standby notices the freed slot by looking at it.
    slot = unique("takeover_nolock")
    await execute(module_dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    other = await replication_connect(module_dsn)
    await start_copy_both(
        other,
        f"START_REPLICATION SLOT {slot} LOGICAL 0/0 (proto_version '1', publication_names '{tk}')",
    )
    rec = Recorder()
    ref = await wal_reader.subscribe(
        rec, module_dsn, slot, [tk], {"slot_type": "persistent", "standby": True}
    )
    try:
        freed = trio.current_time()
        await other.close()
        with trio.fail_after(TAKEOVER_POLL + 5):
            await ref.wait_streaming()
        assert trio.current_time() - freed <= TAKEOVER_POLL + 1
    finally:
        await wal_reader.unsubscribe(ref)
        await drop_slot_when_free(module_dsn, slot)


async def test_a_lock_held_by_a_vanished_session_delays_the_takeover_by_a_second_at_most(
    module_dsn: str, tk: str, readers: Ref
) -> None:
    # A machine that vanished: its walsender is gone (PostgreSQL frees the slot
    # after wal_sender_timeout) but its normal session still holds the lock.
    slot = unique("takeover_zombie")
    await execute(module_dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    zombie = await TrioConnection.connect(module_dsn, autocommit=True)
    await zombie.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", [SLOT_LOCK_CLASS, slot])
    other = await replication_connect(module_dsn)
    await start_copy_both(
        other,
        f"START_REPLICATION SLOT {slot} LOGICAL 0/0 (proto_version '1', publication_names '{tk}')",
    )
    ref = await wal_reader.subscribe(
        Recorder(), module_dsn, slot, [tk], {"slot_type": "persistent", "standby": True}
    )
    try:
        freed = trio.current_time()
        await other.close()
        with trio.fail_after(TAKEOVER_POLL + 5):
            await ref.wait_streaming()
        took = trio.current_time() - freed
        print(f"standby takeover with the lock held elsewhere: {took * 1000:.0f} ms")
        assert took <= TAKEOVER_POLL + 1
    finally:
        await wal_reader.unsubscribe(ref)
        await zombie.close()
        await drop_slot_when_free(module_dsn, slot)
