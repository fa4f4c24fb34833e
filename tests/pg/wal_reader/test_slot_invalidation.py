"""An invalidated slot is terminal: one clear error, one stop callback, no restart loop.

PostgreSQL invalidates a slot whose WAL it had to remove
(``max_slot_wal_keep_size`` exceeded: ``wal_status = 'lost'``).  These tests
make that happen for real, on a server of their own (so that the small
``max_slot_wal_keep_size`` cannot invalidate the slots of other tests), by
writing WAL, switching segments and checkpointing until the slot is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import trio
from wr_helpers import Recorder, execute, published_table, query, unique

from otpy import ExitReason, Ref, count_children
from otpy.pg import wal_reader
from otpy.pg.connection import TrioConnection
from otpy.pg.copy_both import replication_connect, start_copy_both
from otpy.pg.testing import PostgresServer, create_database, external_dsn
from otpy.pg.wal_reader import ChangeBatch, SlotInvalidated, SlotLost
from otpy.pg.wal_reader.slots import slot_gone_error

pytestmark = pytest.mark.skipif(
    external_dsn() is not None, reason="needs a throw-away server of its own"
)


@pytest.fixture(scope="module")
def small_dsn() -> Iterator[str]:
    """A database on a server that keeps at most 1 MB of WAL for lagging slots."""
    with PostgresServer(settings={"max_slot_wal_keep_size": "1MB"}) as server:
        dsn = create_database(server.dsn, "t_invalidation")
        published_table(dsn, "inv", "id serial PRIMARY KEY, pad text")
        yield dsn


async def _invalidate(dsn: str, slot: str) -> None:
    """Write WAL past ``max_slot_wal_keep_size`` and checkpoint until the slot is lost."""
    with trio.fail_after(60):
        for _ in range(50):
            await execute(
                dsn,
                "INSERT INTO inv (pad) SELECT repeat('x', 200) FROM generate_series(1, 2000)",
                "SELECT pg_switch_wal()",
                "CHECKPOINT",
            )
            rows = await query(
                dsn, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", [slot]
            )
            if rows and rows[0][0] == "lost":
                return
        raise AssertionError(f"slot {slot} was never invalidated")


async def test_subscribing_to_an_invalidated_slot_raises_slot_invalidated(
    small_dsn: str, readers: Ref
) -> None:
    slot = unique("inv_first")
    await execute(small_dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    try:
        await _invalidate(small_dsn, slot)
        with pytest.raises(SlotInvalidated, match="pg_drop_replication_slot") as info:
            await wal_reader.subscribe(
                Recorder(), small_dsn, slot, ["inv_pub"], {"slot_type": "persistent"}
            )
        assert info.value.reason == "wal_removed" and info.value.slot == slot
        assert (await count_children(readers)).specs == 0
    finally:
        await execute(small_dsn, f"SELECT pg_drop_replication_slot('{slot}')")


class Holding(Recorder):
    """Never returns from the first transaction, so the slot stays behind; records stops."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = trio.Event()
        self.stop_errors: list[Any] = []
        self.stopping: list[Ref | None] = []

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        self.holding.set()
        await trio.sleep_forever()

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        self.stop_errors.append(ref.error)
        self.stopping.append(ref.reader())
        await super().handle_replication_stop(ref, slot_name)


async def test_a_slot_invalidated_under_a_running_reader_ends_it_once_without_restarts(
    small_dsn: str, readers: Ref, caplog: pytest.LogCaptureFixture
) -> None:
    handler = Holding()
    slot = unique("inv_running")
    ref = await wal_reader.subscribe(
        handler,
        small_dsn,
        slot,
        ["inv_pub"],
        {"slot_type": "persistent", "restart_backoff": {"initial": 0.05, "maximum": 0.2}},
    )
    try:
        await execute(small_dsn, "INSERT INTO inv (pad) VALUES ('held')")
        with trio.fail_after(15):
            await handler.holding.wait()
        with caplog.at_level(logging.ERROR, logger="otpy.pg.wal_reader"):
            await _invalidate(small_dsn, slot)
            with trio.fail_after(30):
                error = await ref.wait_stopped()
        assert isinstance(error, SlotInvalidated) and ref.error is error
        # The crash of the killed stream, then exactly one terminal stop with the error.
        # One ordinary stop per stream that ended (the killed one, and one more only
        # if a restart won a race for the slot), then one terminal stop with the error.
        *ordinary, terminal = handler.stop_errors
        assert terminal is error and ordinary == [None] * ref.state.starts
        last = handler.stopping[-1]
        assert last is not None
        with trio.fail_after(5):
            reason = await last.wait()
        assert reason == ExitReason.shutdown(error)
        assert (await count_children(readers)).specs == 0
        assert ref.state.starts in (1, 2)
        with pytest.raises(SlotInvalidated):
            await ref.wait_streaming()
        logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(
            "invalidated" in m and "pg_drop_replication_slot" in m and "resynchronise" in m
            for m in logged
        ), logged
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(
            small_dsn,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            f"WHERE slot_name = '{slot}'",
        )


async def test_start_replication_refusals_are_read_as_lost_or_invalidated(small_dsn: str) -> None:
    slot = unique("inv_start")
    await execute(small_dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    try:
        await _invalidate(small_dsn, slot)
        async with await TrioConnection.connect(small_dsn, autocommit=True) as meta:
            for name, expected in ((slot, SlotInvalidated), (unique("inv_none"), SlotLost)):
                repl = await replication_connect(small_dsn)
                try:
                    with pytest.raises(psycopg.Error) as info:
                        await start_copy_both(
                            repl,
                            f"START_REPLICATION SLOT {name} LOGICAL 0/0 "
                            "(proto_version '1', publication_names 'inv_pub')",
                        )
                finally:
                    await repl.close()
                error = await slot_gone_error(meta, name, info.value, temporary=False)
                assert isinstance(error, expected), (name, info.value)
    finally:
        await execute(small_dsn, f"SELECT pg_drop_replication_slot('{slot}')")


async def test_a_standby_whose_slot_is_invalidated_ends_instead_of_waiting_forever(
    small_dsn: str, readers: Ref
) -> None:
    slot = unique("inv_standby")
    await execute(small_dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    # Another session holds the slot and never acknowledges: the reader stands by.
    foreign = await replication_connect(small_dsn)
    handler = Holding()
    ref = None
    try:
        await start_copy_both(
            foreign,
            f"START_REPLICATION SLOT {slot} LOGICAL 0/0 "
            "(proto_version '1', publication_names 'inv_pub')",
        )
        ref = await wal_reader.subscribe(
            handler,
            small_dsn,
            slot,
            ["inv_pub"],
            {
                "slot_type": "persistent",
                "standby": True,
                "restart_backoff": {"initial": 0.05, "maximum": 0.2},
            },
        )
        reader = ref.reader()
        assert reader is not None and ref.state.starts == 0
        await _invalidate(small_dsn, slot)
        with trio.fail_after(30):
            error = await ref.wait_stopped()
        assert isinstance(error, SlotInvalidated)
        # One terminal stop call carries the error (one more only if the standby
        # took the slot over in the instant between the kill and the invalidation).
        assert handler.stop_errors[-1] is error and len(handler.stop_errors) <= 2
        last = handler.stopping[-1]
        assert last is not None
        with trio.fail_after(5):
            assert await last.wait() == ExitReason.shutdown(error)
        assert (await count_children(readers)).specs == 0
    finally:
        await foreign.close()
        if ref is not None:
            await wal_reader.unsubscribe(ref)
        await execute(
            small_dsn,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            f"WHERE slot_name = '{slot}'",
        )
