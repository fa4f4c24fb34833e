"""Proven: a primary failover loses nothing, and a reader can read from a standby.

The failover test (PostgreSQL 17+, slow) runs a primary and a physical standby
made with pg_basebackup, a reader on a *failover* slot through a multi-host DSN
(``target_session_attrs=read-write``), a numbered workload, an immediate stop
of the primary in the middle of it, and the promotion of the standby.  The
reader reconnects to the new primary, resumes from the slot the standby's
slot sync worker kept, and delivers every transaction: 0 lost, duplicates
only from the tail the new primary's copy of the slot had not seen
acknowledged.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import trio
from failover_helpers import primary_and_standby, wait_until
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from wr_helpers import FAST_BACKOFF, check_delivery

from otpy import DynamicSupervisor
from otpy import start as start_actor
from otpy.pg import wal_reader
from otpy.pg.connection import TrioConnection
from otpy.pg.testing import external_dsn
from otpy.pg.wal_reader import ChangeBatch, ReplicationHandler

pytestmark = pytest.mark.skipif(
    external_dsn() is not None, reason="needs throw-away servers (OTPY_TEST_DSN is set)"
)

SLOT = "failover_reader"
TRANSACTIONS = 600
KILL_AFTER = 300


class Ids(ReplicationHandler):
    """Records every delivered row id, in delivery order (duplicates kept)."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self._event = trio.Event()

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        self.ids.extend(c.data["id"] for c in changes)
        self._event.set()
        self._event = trio.Event()

    async def wait_for(self, wanted: set[int], within: float) -> None:
        with trio.fail_after(within):
            while not wanted <= set(self.ids):
                await self._event.wait()


def multi_host(*dsns: str) -> str:
    params = [conninfo_to_dict(d) for d in dsns]
    return make_conninfo(
        host=",".join(str(p["host"]) for p in params),
        port=",".join(str(p["port"]) for p in params),
        user="postgres",
        dbname="postgres",
        target_session_attrs="read-write",
        connect_timeout="2",
    )


def needs(dsn: str, least: int, what: str) -> None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    if row[0] < least:
        pytest.skip(f"{what} needs PostgreSQL {least // 10000}+")


@pytest.mark.slow
async def test_a_primary_failover_loses_no_committed_transaction(pg_dsn: str) -> None:
    needs(pg_dsn, 170000, "failover slots")
    with primary_and_standby() as (primary, standby):
        with psycopg.connect(primary.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE fo (id int PRIMARY KEY)")
            conn.execute("CREATE PUBLICATION fo_pub FOR TABLE fo")
        dsn = multi_host(primary.dsn, standby.dsn)
        handler = Ids()
        committed: list[int] = []
        async with trio.open_nursery() as nursery:
            await start_actor(nursery, DynamicSupervisor(), name=wal_reader.READERS_SUPERVISOR)
            ref = await wal_reader.subscribe(
                handler,
                dsn,
                SLOT,
                ["fo_pub"],
                {
                    "slot_type": "persistent",
                    "failover": True,
                    "restart_backoff": FAST_BACKOFF,
                    "connect_timeout": 10,
                },
            )
            # The standby's slot sync worker has a usable copy of the failover slot.
            await wait_until(
                "SELECT synced AND NOT temporary FROM pg_replication_slots WHERE slot_name = %s",
                standby.dsn,
                [SLOT],
                within=60,
            )
            killed = trio.Event()

            async def workload() -> None:
                async with await TrioConnection.connect(primary.dsn, autocommit=True) as conn:
                    for n in range(1, TRANSACTIONS + 1):
                        if n == KILL_AFTER:
                            primary.stop(mode="immediate")  # a crash: no shutdown checkpoint
                            killed.set()
                            return
                        await conn.execute("INSERT INTO fo VALUES (%s)", [n])
                        committed.append(n)  # the commit returned: the standby has it

            await workload()
            assert killed.is_set()
            with psycopg.connect(standby.dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_promote(wait => true)")
            # The new primary takes the rest of the workload.
            async with await TrioConnection.connect(standby.dsn, autocommit=True) as conn:
                for n in range(KILL_AFTER, TRANSACTIONS + 1):
                    await conn.execute("INSERT INTO fo VALUES (%s)", [n])
                    committed.append(n)
                cur = await conn.execute("SELECT id FROM fo ORDER BY id")
                present = [row[0] for row in await cur.fetchall()]
            await handler.wait_for(set(present), within=90)
            await ref.wait_streaming(2)
            await wal_reader.unsubscribe(ref)
            nursery.cancel_scope.cancel()
        lost = set(committed) - set(handler.ids)
        duplicates = len(handler.ids) - len(set(handler.ids))
        print(
            f"failover: committed {len(committed)}, on the new primary {len(present)}, "
            f"delivered {len(handler.ids)} ({len(set(handler.ids))} distinct), "
            f"lost {len(lost)}, duplicates {duplicates}"
        )
        assert set(committed) <= set(present)  # what the client saw committed survived
        assert not lost
        check_delivery(handler.ids, present)  # no gap, in order, duplicates only by going back


async def test_a_reader_can_read_from_a_standby(pg_dsn: str) -> None:
    needs(pg_dsn, 160000, "logical decoding on a standby")
    with primary_and_standby(failover_slots=False) as (primary, standby):
        with psycopg.connect(primary.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE sb (id int PRIMARY KEY)")
            conn.execute("CREATE PUBLICATION sb_pub FOR TABLE sb")
        await wait_until(
            "SELECT count(*) FROM pg_publication WHERE pubname = %s", standby.dsn, ["sb_pub"], 30
        )
        handler = Ids()
        async with trio.open_nursery() as nursery:
            await start_actor(nursery, DynamicSupervisor(), name=wal_reader.READERS_SUPERVISOR)
            subscribed = trio.Event()

            async def nudge() -> None:
                # A slot created on a standby waits for the primary's next
                # running-transactions record: ask the primary for one.
                async with await TrioConnection.connect(primary.dsn, autocommit=True) as conn:
                    while not subscribed.is_set():
                        await conn.execute("SELECT pg_log_standby_snapshot()")
                        with trio.move_on_after(0.1):
                            await subscribed.wait()

            nursery.start_soon(nudge)
            with trio.fail_after(60):
                ref = await wal_reader.subscribe(handler, standby.dsn, "on_standby", ["sb_pub"])
            subscribed.set()
            with psycopg.connect(primary.dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO sb SELECT generate_series(1, 3)")
            await handler.wait_for({1, 2, 3}, within=30)
            assert handler.ids == [1, 2, 3]
            await wal_reader.unsubscribe(ref)
            nursery.cancel_scope.cancel()
