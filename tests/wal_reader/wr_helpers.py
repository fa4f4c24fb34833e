"""Helpers of the WAL reader tests: recording handlers, SQL helpers.

Everything runs against the session's real PostgreSQL (``module_dsn``); nothing
is mocked.  Waiting is done on events with deadlines, never on sleeps.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import psycopg
import trio
from psycopg import sql

from otpy.pg.connection import TrioConnection
from otpy.pg.wal_reader import Change, ChangeBatch, ReplicationHandler

_names = itertools.count()

#: Fast restarts for tests.
FAST_BACKOFF = {"initial": 0.05, "maximum": 0.5}


def unique(prefix: str) -> str:
    """A fresh slot/publication name."""
    return f"{prefix}_{next(_names)}"


class Recorder(ReplicationHandler):
    """Records every batch and stop call; tests wait on its conditions with deadlines.

    ``fail`` is an optional hook called before recording; raising from it makes the
    reader crash without acknowledging (the batch is *not* recorded).
    """

    def __init__(self, fail: Callable[[ChangeBatch], None] | None = None) -> None:
        self.batches: list[ChangeBatch] = []
        self.stops: list[str] = []
        self.fail = fail
        self._event = trio.Event()

    def _wake(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        if self.fail is not None:
            self.fail(changes)
        self.batches.append(changes)
        self._wake()

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        self.stops.append(slot_name)
        self._wake()

    @property
    def changes(self) -> list[Change]:
        return [c for b in self.batches for c in b]

    @property
    def rows(self) -> list[tuple[str, str, Any, Any]]:
        return [(c.table, c.op, c.data, c.old) for c in self.changes]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 15.0) -> None:
        with trio.fail_after(within):
            while not predicate():
                await self._event.wait()

    async def wait_changes(self, n: int, within: float = 15.0) -> list[Change]:
        await self.wait_for(lambda: len(self.changes) >= n, within)
        return self.changes


async def execute(dsn: str, *statements: str, params: Any = None) -> None:
    """Run statements on a fresh trio connection, each in autocommit (BEGIN...COMMIT allowed)."""
    async with await TrioConnection.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            await conn.execute(statement, params)  # type: ignore[arg-type]


async def query(dsn: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Rows of one query."""
    async with await TrioConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(statement, params)  # type: ignore[arg-type]
        return await cur.fetchall()


def create_publication(dsn: str, name: str, tables: list[str] | None = None) -> None:
    """CREATE PUBLICATION (blocking, for setup)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        target = (
            sql.SQL("FOR TABLE {}").format(sql.SQL(", ").join(sql.Identifier(t) for t in tables))
            if tables
            else sql.SQL("FOR ALL TABLES")
        )
        conn.execute(sql.SQL("CREATE PUBLICATION {} {}").format(sql.Identifier(name), target))


def drop_slot(dsn: str, slot: str) -> None:
    """Drop a (persistent) slot if it exists."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s",
            [slot],
        )


async def walsender_pid(dsn: str, slot: str) -> int | None:
    rows = await query(
        dsn, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", [slot]
    )
    return rows[0][0] if rows else None
