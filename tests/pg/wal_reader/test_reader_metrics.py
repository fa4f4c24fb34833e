"""Reader metrics against the real server: lag while a handler is blocked, heartbeats."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import trio
from obs_helpers import wait_until
from wr_helpers import Recorder, create_publication, execute, query, unique

from otpy import Ref
from otpy.pg import metrics, wal_reader
from otpy.pg.replication import LSN
from otpy.pg.wal_reader.metrics import HEARTBEAT_PREFIX


@pytest.fixture(scope="module")
def pub(module_dsn: str) -> str:
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
    create_publication(module_dsn, "items_pub", ["items"])
    return "items_pub"


class Gate(Recorder):
    """Blocks in the handler on its first batch until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = trio.Event()
        self.release = trio.Event()

    async def handle_replication_data(self, ref: Any, changes: Any) -> None:
        self.entered.set()
        await self.release.wait()
        await super().handle_replication_data(ref, changes)


async def test_lag_rises_while_the_handler_is_blocked_and_falls_after(
    module_dsn: str, pub: str, readers: Ref
) -> None:
    gate = Gate()
    sub = await wal_reader.subscribe(gate, module_dsn, unique("lag"), [pub])
    try:
        with trio.fail_after(10):  # the stream task starts just after subscribe returns
            await sub.wait_streaming()
        idle = sub.metrics()
        assert idle.state == "streaming"
        assert (idle.lag_seconds, idle.transactions, idle.queue_depth) == (0.0, 0, 0)

        await execute(module_dsn, "INSERT INTO items VALUES (1)")
        with trio.fail_after(15):
            await gate.entered.wait()
        await execute(module_dsn, "INSERT INTO items VALUES (2)")
        # The second transaction is received (queued behind the blocked handler).
        await wait_until(lambda: sub.metrics().queue_depth == 2)
        first = sub.metrics()
        assert first.lag_bytes > 0
        assert first.received_lsn > first.acknowledged_lsn
        assert first.lag_seconds > 0
        await execute(module_dsn, "SELECT 1")  # time passes while the handler is blocked
        second = sub.metrics()
        assert second.lag_seconds > first.lag_seconds
        assert second.transactions == 0

        gate.release.set()
        await gate.wait_changes(2)
        await wait_until(lambda: sub.metrics().transactions == 2)
        after = sub.metrics()
        assert after.lag_seconds == 0.0
        assert after.lag_bytes < first.lag_bytes
        assert after.acknowledged_lsn >= first.received_lsn
        assert after.changes == 2 and after.batches == 2
        assert sum(n for _, n in after.handler_histogram) == 2
        assert after.handler_seconds_total > 0
        assert after.last_acknowledged_commit_time is not None
        assert after.restarts == 0 and after.last_error is None
        assert sub in wal_reader.subscriptions()
        assert after in metrics.snapshot().readers
    finally:
        await wal_reader.unsubscribe(sub)
    assert sub.metrics().state == "stopped"


async def test_heartbeats_come_back_and_never_reach_the_handler(
    module_dsn: str, pub: str, readers: Ref
) -> None:
    rec = Recorder()
    sub = await wal_reader.subscribe(
        rec,
        module_dsn,
        unique("hb"),
        [pub],
        {"heartbeat_interval": 0.1, "messages": True},
    )
    try:
        await wait_until(lambda: sub.metrics().heartbeats_received >= 3)
        await execute(module_dsn, "SELECT pg_logical_emit_message(false, 'user', 'hello')")
        changes = await rec.wait_changes(1)
        # The user's own message is delivered; heartbeats never are.
        assert [(c.table, c.op) for c in changes] == [("user", "message")]
        assert all(c.table != HEARTBEAT_PREFIX for c in rec.changes)
        m = sub.metrics()
        assert m.heartbeats_sent >= m.heartbeats_received >= 3
        assert not m.heartbeat_overdue and m.healthy
        assert m.last_acknowledged_commit_time is not None
    finally:
        await wal_reader.unsubscribe(sub)


async def test_a_heartbeat_stuck_behind_a_blocked_handler_marks_the_reader_unhealthy(
    module_dsn: str, pub: str, readers: Ref
) -> None:
    gate = Gate()
    sub = await wal_reader.subscribe(
        gate,
        module_dsn,
        unique("hbstuck"),
        [pub],
        {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5},
    )
    try:
        await wait_until(lambda: sub.metrics().heartbeats_received >= 1)
        assert metrics.readiness() == []
        await execute(module_dsn, "INSERT INTO items VALUES (100)")
        with trio.fail_after(15):
            await gate.entered.wait()
        await wait_until(lambda: sub.metrics().heartbeat_overdue)
        assert not sub.metrics().healthy
        assert any("heartbeat did not come back" in p for p in metrics.readiness())
        gate.release.set()
        await wait_until(lambda: not sub.metrics().heartbeat_overdue)
        assert metrics.readiness() == []
    finally:
        gate.release.set()
        await wal_reader.unsubscribe(sub)


async def test_heartbeats_keep_an_idle_slot_moving_while_another_database_writes(
    module_dsn: str, pg_dsn: str, pub: str, readers: Ref
) -> None:
    slot = unique("hbidle")
    sub = await wal_reader.subscribe(
        Recorder(),
        module_dsn,
        slot,
        [pub],
        {"slot_type": "persistent", "heartbeat_interval": 0.1},
    )

    async def confirmed() -> LSN:
        rows = await query(
            module_dsn,
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            [slot],
        )
        return LSN.parse(rows[0][0])

    try:
        start = await confirmed()
        # WAL written elsewhere: nothing for this slot's publication or database.
        await execute(
            pg_dsn,
            "CREATE TABLE IF NOT EXISTS obs_noise (id serial, pad text)",
            "INSERT INTO obs_noise (pad) SELECT repeat('x', 100) FROM generate_series(1, 2000)",
        )
        (noise_end,) = (await query(pg_dsn, "SELECT pg_current_wal_insert_lsn()::text"))[0]
        # Without heartbeats it moves only at the next keepalive or status update
        # (about 10 s here); a heartbeat every 0.1 s moves it within the deadline.
        with trio.fail_after(5):
            while True:
                if await confirmed() >= LSN.parse(noise_end):
                    break
                await trio.sleep(0.05)
        assert await confirmed() > start
        assert sub.metrics().heartbeats_received >= 1
    finally:
        await wal_reader.unsubscribe(sub)
        await execute(
            module_dsn,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            f"WHERE slot_name = '{slot}'",
        )
        await execute(pg_dsn, "DROP TABLE IF EXISTS obs_noise")
