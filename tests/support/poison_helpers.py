"""Helpers of the failure-policy and manual-ack tests: the slot as the server sees it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from wr_helpers import query

from otpy.pg.replication.lsn import LSN


async def confirmed(dsn: str, slot: str) -> LSN:
    """The slot's ``confirmed_flush_lsn``."""
    rows = await query(
        dsn,
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        [slot],
    )
    return LSN.parse(rows[0][0])


async def reply_time(dsn: str, slot: str) -> Any:
    """When the server last heard a status update from the slot's reader."""
    rows = await query(
        dsn,
        "SELECT r.reply_time FROM pg_stat_replication r JOIN pg_replication_slots s "
        "ON s.active_pid = r.pid WHERE s.slot_name = %s",
        [slot],
    )
    return rows[0][0] if rows else None


async def wait_server(
    probe: Callable[[], Any], until: Callable[[Any], bool], within: float = 10
) -> None:
    """Poll a server-side condition until it holds (bounded by ``within`` seconds)."""
    with trio.fail_after(within):
        while True:
            if until(await probe()):
                return
            await trio.sleep(0.05)  # nothing to wait on: the server holds the state


async def wait_confirmed(dsn: str, slot: str, lsn: LSN) -> None:
    """Wait until the slot's confirmed position is exactly ``lsn``."""
    await wait_server(lambda: confirmed(dsn, slot), lambda pos: pos == lsn)


async def wait_confirmed_past(dsn: str, slot: str, lsn: LSN) -> None:
    """Wait until the slot's confirmed position is beyond ``lsn``."""
    await wait_server(lambda: confirmed(dsn, slot), lambda pos: pos > lsn)


class CollectingHandler:
    """A handler for ``otpy parked replay --handler poison_helpers:CollectingHandler``."""

    #: Every batch replayed through any instance, for the test to read.
    received: list[Any] = []

    async def handle_replication_data(self, ref: Any, changes: Any) -> None:
        CollectingHandler.received.append(changes)

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        pass
