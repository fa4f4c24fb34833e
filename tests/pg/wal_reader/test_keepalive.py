"""Keepalives, status updates and idle acknowledgement, with a short wal_sender_timeout.

The session server's ``wal_sender_timeout`` is lowered with ALTER SYSTEM + reload
for this module and restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import trio
from wr_helpers import Recorder, create_publication, execute, query, unique

from otpy import Ref
from otpy.pg import wal_reader
from otpy.pg.replication import LSN


@pytest.fixture(scope="module")
def short_timeout(module_dsn: str) -> Iterator[str]:
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE ka (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE noise (id serial PRIMARY KEY, pad text)")
        conn.execute("ALTER SYSTEM SET wal_sender_timeout = '1s'")
        conn.execute("SELECT pg_reload_conf()")
    create_publication(module_dsn, "ka_pub", ["ka"])
    try:
        yield "ka_pub"
    finally:
        with psycopg.connect(module_dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET wal_sender_timeout")
            conn.execute("SELECT pg_reload_conf()")


class Slow(Recorder):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def handle_replication_data(self, ref: Any, changes: Any) -> None:
        await trio.sleep(self.seconds)  # a slow handler, not a wait for something
        await super().handle_replication_data(ref, changes)


async def test_keepalives_are_answered_while_the_handler_runs(
    module_dsn: str, short_timeout: str, readers: Ref
) -> None:
    rows = await query(module_dsn, "SHOW wal_sender_timeout")
    assert rows == [("1s",)]
    # The status interval is longer than the timeout: only keepalive replies keep it alive.
    rec = Slow(2.5)
    ref = await wal_reader.subscribe(
        rec, module_dsn, unique("ka"), [short_timeout], {"status_interval": 30}
    )
    try:
        await execute(module_dsn, "INSERT INTO ka VALUES (1)", "INSERT INTO ka VALUES (2)")
        await rec.wait_changes(2, within=20)
        assert rec.stops == [] and ref.state.starts == 1
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, "DELETE FROM ka")


async def test_status_updates_keep_a_backpressured_session_alive(
    module_dsn: str, short_timeout: str, readers: Ref
) -> None:
    # queue_size 1 + a slow handler: the socket is not read for seconds at a time.
    rec = Slow(0.8)
    ref = await wal_reader.subscribe(
        rec,
        module_dsn,
        unique("bp"),
        [short_timeout],
        {"status_interval": 0.2, "queue_size": 1},
    )
    try:
        await execute(module_dsn, *[f"INSERT INTO ka VALUES ({i})" for i in range(5)])
        changes = await rec.wait_changes(5, within=20)
        assert [c.data["id"] for c in changes] == list(range(5))
        assert rec.stops == [] and ref.state.starts == 1
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, "DELETE FROM ka")


async def test_an_idle_slot_does_not_retain_wal(
    module_dsn: str, short_timeout: str, readers: Ref
) -> None:
    slot = unique("idle")
    rec = Recorder()
    ref = await wal_reader.subscribe(
        rec, module_dsn, slot, [short_timeout], {"slot_type": "persistent", "status_interval": 0.1}
    )
    try:
        # WAL that concerns no published table: nothing is delivered...
        await execute(module_dsn, "INSERT INTO noise (pad) SELECT 'x' FROM generate_series(1, 500)")
        target = LSN.parse(
            (await query(module_dsn, "SELECT pg_current_wal_insert_lsn()::text"))[0][0]
        )
        # ...yet the slot's confirmed position follows the server (keepalive end acked).
        with trio.fail_after(15):
            while True:
                rows = await query(
                    module_dsn,
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                    "WHERE slot_name = %s",
                    [slot],
                )
                if LSN.parse(rows[0][0]) >= target:
                    break
                await trio.sleep(0.05)  # polling a server-side condition, bounded above
        assert rec.batches == []
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, f"SELECT pg_drop_replication_slot('{slot}')")
