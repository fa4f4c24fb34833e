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


def published_table(dsn: str, table: str, columns: str) -> str:
    """CREATE TABLE ``table`` (``columns``) and publication ``<table>_pub``; return its name."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table), sql.SQL(columns))
        )
    create_publication(dsn, f"{table}_pub", [table])
    return f"{table}_pub"


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


# --------------------------------------------------------------------------- chaos


async def run_workload(
    dsn: str, table: str, transactions: int, rng: Any, *, big_every: int = 25, retry: bool = False
) -> int:
    """One writer commits ``transactions`` transactions of random sizes into ``table``.

    Rows get ids from a bigserial, so commit order is id order.  With ``retry``,
    connection failures (a server restart) are survived: the writer reconnects
    and goes on (the table itself is the ground truth of what was committed).
    Returns how many connection failures it survived.
    """
    done = 0
    errors = 0
    while done < transactions:
        try:
            async with await TrioConnection.connect(dsn, autocommit=True) as conn:
                while done < transactions:
                    size = 200 if done % big_every == big_every - 1 else rng.randint(1, 6)
                    await conn.execute(
                        f"INSERT INTO {table} (v) SELECT g FROM generate_series(1, {size}) g"  # type: ignore[arg-type]
                    )
                    done += 1
                    if done % 10 == 0:
                        await trio.lowlevel.checkpoint()
        except psycopg.OperationalError:
            if not retry:
                raise
            errors += 1
            done += 1  # the outcome of that commit is unknown: the table will tell
            await trio.sleep(0.1)  # the server is down: try again a bit later
    return errors


def check_delivery(delivered: list[int], committed: list[int]) -> None:
    """0 lost, no gap, never out of order; duplicates only by going back (redelivery).

    ``delivered`` is every id in delivery order (with duplicates), ``committed``
    the ids in the table.  Commit order is id order (one writer).
    """
    rank = {row_id: i for i, row_id in enumerate(sorted(committed))}
    missing = set(rank) - set(delivered)
    assert not missing, f"{len(missing)} committed rows never delivered, e.g. {sorted(missing)[:5]}"
    unknown = set(delivered) - set(rank)
    assert not unknown, f"delivered rows that were never committed: {sorted(unknown)[:5]}"
    highest = -1
    for position, row_id in enumerate(delivered):
        r = rank[row_id]
        assert r <= highest + 1, (
            f"gap/out of order at delivery #{position}: row rank {r} after max rank {highest}"
        )
        highest = max(highest, r)


async def drop_slot_when_free(dsn: str, slot: str) -> None:
    """Drop a slot once the walsender of a killed reader has let go of it (bounded wait)."""
    assert slot.replace("_", "").isalnum()
    await execute(
        dsn,
        f"""DO $$ BEGIN
          FOR i IN 1..300 LOOP
            EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_replication_slots
                                  WHERE slot_name = '{slot}' AND active);
            PERFORM pg_sleep(0.05);
          END LOOP;
          PERFORM pg_drop_replication_slot('{slot}');
        END $$""",
    )
