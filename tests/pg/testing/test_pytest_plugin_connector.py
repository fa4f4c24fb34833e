"""The plugin's connector fixtures and ``wait_caught_up``, used as a user's test would.

These tests take the plugin's own fixtures (``otpy_app``, ``otpy_dsn``), not
the suite's aliases: a fresh database per test, the connector running on it.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio

from otpy.application import System
from otpy.pg import pool, wal_reader
from otpy.pg.testing import NotCaughtUp, wait_caught_up
from otpy.pg.wal_reader import ChangeBatch, ReplicationHandler, StreamEnded
from otpy.pytest_plugin import TEST_DATABASE, TEST_POOL

_slots = itertools.count()


class Slow(ReplicationHandler):
    """Takes a while per transaction, so an assertion right after the inserts would fail."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        await trio.sleep(0.05)  # a handler doing work (the delay under test), not a wait
        self.ids.extend(c.data["id"] for c in changes if c.data is not None)


async def publish(table: str) -> str:
    await pool.query(TEST_POOL, f"CREATE TABLE {table} (id int PRIMARY KEY)")
    await pool.query(TEST_POOL, f"CREATE PUBLICATION {table}_pub FOR TABLE {table}")
    return f"{table}_pub"


async def test_the_connector_runs_on_a_database_of_the_test_s_own(
    otpy_app: System, otpy_dsn: str
) -> None:
    rows = (await pool.query(TEST_POOL, "SELECT current_database()")).rows
    assert rows[0][0] in otpy_dsn
    assert rows[0][0].startswith("t_test_the_connector_runs")


async def test_wait_caught_up_returns_once_the_handler_has_everything_committed(
    otpy_app: System,
) -> None:
    handler = Slow()
    sub = await wal_reader.subscribe(handler, TEST_DATABASE, f"kit_{next(_slots)}", [
        await publish("items")
    ])  # fmt: skip
    for i in range(8):
        await pool.query(TEST_POOL, "INSERT INTO items VALUES (%s)", (i,))
    assert handler.ids != list(range(8))  # the handler is still behind here
    await wait_caught_up(sub, within=20)
    assert handler.ids == list(range(8))


async def test_wait_caught_up_returns_for_an_idle_reader(otpy_app: System) -> None:
    # Nothing published was written: only the flush it commits moves the stream.
    sub = await wal_reader.subscribe(Slow(), TEST_DATABASE, f"kit_{next(_slots)}", [
        await publish("quiet")
    ])  # fmt: skip
    await pool.query(TEST_POOL, "CREATE TABLE unpublished (x int)")
    with trio.fail_after(5):
        target = await wait_caught_up(sub)
    assert sub.metrics().acknowledged_lsn >= target


async def test_wait_caught_up_says_where_a_reader_that_never_acknowledges_stands(
    otpy_app: System,
) -> None:
    sub = await wal_reader.subscribe(
        Slow(),
        TEST_DATABASE,
        f"kit_{next(_slots)}",
        [await publish("manual")],
        {"ack": "manual"},
    )
    await pool.query(TEST_POOL, "INSERT INTO manual VALUES (1)")
    with pytest.raises(NotCaughtUp, match=r"did not catch up .* acknowledged") as info:
        await wait_caught_up(sub, within=1)
    assert isinstance(info.value, TimeoutError)


async def test_wait_caught_up_fails_at_once_when_the_subscription_ends(
    otpy_app: System,
) -> None:
    sub = await wal_reader.subscribe(
        Slow(), TEST_DATABASE, f"kit_{next(_slots)}", [await publish("gone")], {"ack": "manual"}
    )
    await pool.query(TEST_POOL, "INSERT INTO gone VALUES (1)")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wal_reader.unsubscribe, sub)
        with trio.fail_after(10), pytest.raises(StreamEnded):
            await wait_caught_up(sub, within=30)


@pytest.fixture
def otpy_pools() -> dict[str, dict[str, Any]]:
    """Overridden as a user would: the default pool, and a second one of 1."""
    return {TEST_POOL: {"size": 2}, "other": {"size": 1}}


async def test_overriding_otpy_pools_changes_the_connector_s_pools(otpy_app: System) -> None:
    assert (await pool.query("other", "SELECT 1")).rows == [(1,)]
