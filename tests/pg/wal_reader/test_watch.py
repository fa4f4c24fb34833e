"""Slot watch: retained WAL vs max_slot_wal_keep_size, and the derived status interval.

The module lowers ``max_slot_wal_keep_size`` and ``wal_sender_timeout`` on the
session's server (ALTER SYSTEM + reload) and restores them afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import trio
from obs_helpers import wait_until
from wr_helpers import Recorder, create_publication, execute, unique

from otpy import Ref
from otpy.pg import wal_reader
from otpy.pg.wal_reader.watch import DEFAULT_STATUS_INTERVAL


@pytest.fixture(scope="module")
def pub(module_dsn: str) -> Iterator[str]:
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE wide (id serial PRIMARY KEY, pad text)")
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '2MB'")
        conn.execute("ALTER SYSTEM SET wal_sender_timeout = '1500ms'")
        conn.execute("SELECT pg_reload_conf()")
    create_publication(module_dsn, "wide_pub", ["wide"])
    try:
        yield "wide_pub"
    finally:
        with psycopg.connect(module_dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("ALTER SYSTEM RESET wal_sender_timeout")
            conn.execute("SELECT pg_reload_conf()")


class Gate(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.entered = trio.Event()
        self.release = trio.Event()

    async def handle_replication_data(self, ref: Any, changes: Any) -> None:
        self.entered.set()
        await self.release.wait()
        await super().handle_replication_data(ref, changes)


class _Catch(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "replication_slot_at_risk":
            self.records.append(record)


async def test_a_slot_past_half_its_wal_budget_is_reported_and_warned_once(
    module_dsn: str, pub: str, readers: Ref
) -> None:
    gate = Gate()
    catch = _Catch()
    logging.getLogger("otpy.pg.wal_reader").addHandler(catch)
    slot = unique("watch")
    sub = await wal_reader.subscribe(
        gate, module_dsn, slot, [pub], {"slot_type": "persistent", "slot_check_interval": 0.05}
    )
    try:
        await wait_until(lambda: sub.metrics().slot_health is not None)
        health = sub.metrics().slot_health
        assert health is not None
        assert health.max_slot_wal_keep_size == 2 * 1024 * 1024
        assert health.wal_status == "reserved"
        assert health.warning() is None and catch.records == []

        # The handler blocks on the first transaction: nothing is acknowledged
        # while about 1.5 MB of WAL is written.
        await execute(module_dsn, "INSERT INTO wide (pad) VALUES ('first')")
        with trio.fail_after(15):
            await gate.entered.wait()
        await execute(
            module_dsn,
            "INSERT INTO wide (pad) "
            "SELECT repeat(md5(g::text), 20) FROM generate_series(1, 2000) g",
        )
        await wait_until(lambda: len(catch.records) >= 1)
        m = sub.metrics()
        assert m.slot_health is not None
        assert m.slot_health.retained_fraction is not None
        assert m.slot_health.retained_fraction >= 0.5
        assert "max_slot_wal_keep_size" in catch.records[0].getMessage()
        assert catch.records[0].risk == "retention"  # type: ignore[attr-defined]
        # Later checks of the same state do not repeat the warning.
        for _ in range(3):
            seen = sub.counters.slot_health
            await wait_until(lambda seen=seen: sub.counters.slot_health is not seen)
        assert len(catch.records) == 1
    finally:
        gate.release.set()
        logging.getLogger("otpy.pg.wal_reader").removeHandler(catch)
        await wal_reader.unsubscribe(sub)
        await execute(module_dsn, f"SELECT pg_drop_replication_slot('{slot}')")


async def test_the_status_interval_follows_wal_sender_timeout_unless_set(
    module_dsn: str, pub: str, readers: Ref
) -> None:
    sub = await wal_reader.subscribe(Recorder(), module_dsn, unique("derived"), [pub])
    try:
        session = sub.counters.session
        assert session is not None
        assert session.status_interval == pytest.approx(0.5)
    finally:
        await wal_reader.unsubscribe(sub)
    sub = await wal_reader.subscribe(
        Recorder(), module_dsn, unique("fixed"), [pub], {"status_interval": 0.3}
    )
    try:
        session = sub.counters.session
        assert session is not None
        assert session.status_interval == 0.3
    finally:
        await wal_reader.unsubscribe(sub)
    assert DEFAULT_STATUS_INTERVAL == 10.0
