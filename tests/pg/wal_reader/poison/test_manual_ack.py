"""ack="manual": the handler acknowledges later, out of order, with a cap on what is outstanding.

Against the real server: the slot's confirmed position is read from
``pg_replication_slots``, a restart is a walsender killed by the server.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from poison_helpers import confirmed, reply_time, wait_confirmed, wait_server
from wr_helpers import FAST_BACKOFF, Recorder, drop_slot, execute, published_table, unique

from otpy.pg import wal_reader
from otpy.pg.replication.errors import ReplicationError
from otpy.pg.replication.lsn import LSN


async def subscribe_manual(module_dsn: str, rec: Recorder, **options: Any) -> tuple[Any, str, str]:
    table = unique("ack_t")
    pub = published_table(module_dsn, table, "id serial primary key, v int")
    slot = unique("ack_slot")
    ref = await wal_reader.subscribe(
        rec,
        module_dsn,
        slot,
        [pub],
        {
            "slot_type": "persistent",
            "ack": "manual",
            "status_interval": 0.1,
            "restart_backoff": FAST_BACKOFF,
            **options,
        },
    )
    return ref, slot, table


async def insert_each(dsn: str, table: str, values: range) -> None:
    """One transaction per value."""
    await execute(dsn, *(f"INSERT INTO {table} (v) VALUES ({v})" for v in values))


async def test_out_of_order_acks_confirm_the_acknowledged_prefix_and_a_restart_redelivers_the_tail(
    readers: Any, module_dsn: str
) -> None:
    rec = Recorder()
    ref, slot, table = await subscribe_manual(module_dsn, rec)
    try:
        await insert_each(module_dsn, table, range(1, 5))
        await rec.wait_changes(4)
        b1, b2, b3, b4 = rec.batches
        start = await confirmed(module_dsn, slot)
        # Returning acknowledged nothing of b1: the slot is at most at b1's commit
        # record (an idle keepalive may confirm exactly there; PostgreSQL still
        # sends a transaction whose commit record starts at the confirmed position).
        assert start <= b1.commit_lsn
        assert ref.ack(b3.commit_lsn) and ref.ack(b1.commit_lsn)
        assert not ref.ack(b1.commit_lsn)  # already acknowledged
        # 3 is acknowledged but 2 is not: only 1 is confirmed.
        await wait_confirmed(module_dsn, slot, b1.end_lsn)
        assert ref.ack(b2.commit_lsn)
        await wait_confirmed(module_dsn, slot, b3.end_lsn)  # 2 closed the gap up to 3

        # Restart (the server kills the walsender): exactly the unacknowledged tail comes again.
        starts = ref.state.starts
        await execute(
            module_dsn,
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            f"WHERE slot_name = '{slot}'",
        )
        with trio.fail_after(20):
            await ref.wait_streaming(starts + 1)
        await rec.wait_changes(5)
        again = rec.batches[4:]
        assert [b.commit_lsn for b in again] == [b4.commit_lsn]
        assert [c.data["v"] for c in again[0]] == [4]
        assert ref.ack(b4.commit_lsn)
        await wait_confirmed(module_dsn, slot, b4.end_lsn)
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)


async def test_the_cap_on_unacknowledged_transactions_holds_the_stream_until_an_ack(
    readers: Any, module_dsn: str, pg_dsn: str
) -> None:
    rec = Recorder()
    ref, slot, table = await subscribe_manual(module_dsn, rec, max_unacked=2)
    try:
        await insert_each(module_dsn, table, range(1, 4))
        await rec.wait_changes(2)
        tracker = ref.state.acks
        with trio.fail_after(10):
            await tracker.wait_blocked()
        assert len(rec.batches) == 2 and tracker.outstanding == 2
        # Held at the cap, the reader still answers the server (status updates go on).
        before = await reply_time(module_dsn, slot)
        await wait_server(lambda: reply_time(module_dsn, slot), lambda t: t != before)
        assert len(rec.batches) == 2
        b1, b2 = rec.batches
        assert ref.ack(b2.commit_lsn)  # out of order: 1 still outstanding, no room yet
        assert tracker.blocked and tracker.outstanding == 2
        assert ref.ack(b1.commit_lsn)  # room: the third transaction comes
        changes = await rec.wait_changes(3)
        assert [c.data["v"] for c in changes] == [1, 2, 3]
        assert ref.ack(rec.batches[2].commit_lsn)
        await wait_confirmed(module_dsn, slot, rec.batches[2].end_lsn)
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)


async def test_a_handler_may_acknowledge_before_it_returns(readers: Any, module_dsn: str) -> None:
    class AckAtOnce(Recorder):
        async def handle_replication_data(self, ref: Any, changes: Any) -> None:
            assert ref.ack(changes.commit_lsn)
            await super().handle_replication_data(ref, changes)

    rec = AckAtOnce()
    ref, slot, table = await subscribe_manual(module_dsn, rec)
    try:
        await insert_each(module_dsn, table, range(1, 3))
        await rec.wait_changes(2)
        await wait_confirmed(module_dsn, slot, rec.batches[1].end_lsn)
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)


async def test_ack_on_an_automatic_subscription_is_refused(readers: Any, module_dsn: str) -> None:
    table = unique("auto_t")
    pub = published_table(module_dsn, table, "id int")
    ref = await wal_reader.subscribe(Recorder(), module_dsn, unique("auto_slot"), [pub])
    try:
        with pytest.raises(ReplicationError, match="ack='manual'"):
            ref.ack(LSN(1))
    finally:
        await wal_reader.unsubscribe(ref)
