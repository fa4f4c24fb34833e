"""Two tables that sync each other, exactly once and without echo.

``notes_a`` and ``notes_b`` each get their own writes; a reader on each
streams them into the other table through an exactly-once handler::

    notes_a --slot two_way_a--> Sync(origin "two_way_a_to_b") --> notes_b
    notes_b --slot two_way_b--> Sync(origin "two_way_b_to_a") --> notes_a

Why no echo: the handler writes under a replication origin, so PostgreSQL
tags those writes; the other direction's reader sees the tag (pgoutput's
Origin message, ``changes.origin``) and skips them (``skip_replicated``).
On PostgreSQL 16 and later the reader may ask the server not to send them at
all (the reader option ``origin = "none"``, when this otpy has it); the
client-side skip stays as a safety net and is what works on 15.  Without
either, each applied row comes back as a change of the other table, and the
two readers bounce it forever (``--no-loop-prevention`` shows it).

The two tables could as well be two databases (two pools): nothing changes
but the DSNs.  Run: ``python examples/two_way_sync.py [--dsn DSN] [--rows N]``
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import trio

import otpy
from otpy.pg import pool, wal_reader
from otpy.pg.config import DatabaseConfig, PoolConfig
from otpy.pg.connection import TrioConnection
from otpy.pg.exactly_once import ExactlyOnceHandler
from otpy.pg.wal_reader import Change, ChangeBatch

import _demo

logger = logging.getLogger(__name__)

POOL = "two_way"
SETUP = [
    "DROP TABLE IF EXISTS notes_a, notes_b",
    "DROP PUBLICATION IF EXISTS notes_a_pub",
    "DROP PUBLICATION IF EXISTS notes_b_pub",
    "CREATE TABLE notes_a (id text PRIMARY KEY, body text NOT NULL)",
    "CREATE TABLE notes_b (id text PRIMARY KEY, body text NOT NULL)",
    "CREATE PUBLICATION notes_a_pub FOR TABLE notes_a",
    "CREATE PUBLICATION notes_b_pub FOR TABLE notes_b",
]
# Who applies which direction: (slot, publication, target table, origin).
DIRECTIONS = [
    ("two_way_a", "notes_a_pub", "notes_b", "two_way_a_to_b"),
    ("two_way_b", "notes_b_pub", "notes_a", "two_way_b_to_a"),
]


class Progress:
    """Wakes the example's main task whenever a handler handled a batch."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def wake(self) -> None:
        """Wake the waiters."""
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        """Wait for the next :meth:`wake`."""
        await self._event.wait()


class Sync(ExactlyOnceHandler):
    """Applies one table's changes to the other one, inside the exactly-once transaction."""

    def __init__(
        self, target: str, origin: str, progress: Progress, *, loop_prevention: bool
    ) -> None:
        super().__init__(POOL, origin, skip_replicated=loop_prevention)
        self.target = target
        self.progress = progress

    async def apply(self, conn: TrioConnection[Any], changes: ChangeBatch) -> None:
        """Upsert or delete each row in the other table (``self.target`` is a fixed name)."""
        for change in changes:
            match change:
                case Change(_, "insert" | "update", row, _):
                    await conn.execute(
                        f"INSERT INTO {self.target} (id, body) VALUES (%s, %s) "
                        "ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body",
                        (row["id"], row["body"]),
                    )
                case Change(_, "delete", row, _):
                    await conn.execute(
                        f"DELETE FROM {self.target} WHERE id = %s",
                        (row["id"],),
                    )

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        """Apply (or skip) the batch, then wake whoever waits on the counters."""
        await super().handle_replication_data(ref, changes)
        self.progress.wake()


@attrs.frozen
class SyncReport:
    """What happened: rows in each table, transactions applied and echoes skipped per direction."""

    rows_a: int
    rows_b: int
    applied: dict[str, int]
    echoes_skipped: dict[str, int]
    server_filters_origin: bool


def reader_options(server_version: int, *, loop_prevention: bool = True) -> dict[str, Any]:
    """Persistent slots; with loop prevention, ``origin = "none"`` where the server has it (16+)."""
    options: dict[str, Any] = {"slot_type": "persistent"}
    if loop_prevention and server_version >= 160000:
        options["origin"] = "none"
    return options


async def count(conn: TrioConnection[Any], table: str) -> int:
    """Rows in ``table`` (a fixed name)."""
    cur = await conn.execute(f"SELECT count(*) FROM {table}")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def main(dsn: str, *, rows: int = 5, loop_prevention: bool = True) -> SyncReport:
    """Write ``rows`` notes into each table, let the readers sync them, report.

    With ``loop_prevention`` off, waits until an echo came back (the loop
    started), then stops the readers.  Bound it with ``trio.fail_after``.
    """
    async with await TrioConnection.connect(dsn, autocommit=True) as admin:
        for statement in SETUP:
            await admin.execute(statement)
        for slot, *_ in DIRECTIONS:
            await admin.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                [slot],
            )
        options = reader_options(admin.info.server_version, loop_prevention=loop_prevention)
    progress = Progress()
    handlers = {
        slot: Sync(target, origin, progress, loop_prevention=loop_prevention)
        for slot, _, target, origin in DIRECTIONS
    }
    database = DatabaseConfig.from_dsn("two_way_db", dsn)
    config = PoolConfig(name=POOL, database="two_way_db", min_size=1, max_size=4)
    async with pool.open_pool(POOL, config, database), trio.open_nursery() as nursery:
        for handler in handlers.values():  # a fresh start: no position from an earlier run
            await handler.exactly_once.forget()
        await otpy.start(nursery, otpy.DynamicSupervisor(), name=wal_reader.READERS_SUPERVISOR)
        subscriptions = [
            await wal_reader.subscribe(handlers[slot], dsn, slot, [publication], options)
            for slot, publication, _, _ in DIRECTIONS
        ]
        try:
            async with pool.connection(POOL) as conn:
                for i in range(rows):
                    await conn.execute("INSERT INTO notes_a VALUES (%s, %s)", (f"a{i}", "from a"))
                    await conn.execute("INSERT INTO notes_b VALUES (%s, %s)", (f"b{i}", "from b"))
            a_to_b, b_to_a = (handlers[slot].exactly_once for slot, *_ in DIRECTIONS)

            def settled() -> bool:
                if not loop_prevention:  # an echo arrived: a row came back
                    return a_to_b.applied > rows or b_to_a.applied > rows
                applied = a_to_b.applied == rows and b_to_a.applied == rows
                # Without the server's filter, each direction sees the other's writes.
                echoes = "origin" in options or (
                    a_to_b.replicated == rows and b_to_a.replicated == rows
                )
                return applied and echoes

            while not settled():
                await progress.wait()
            async with pool.connection(POOL) as conn:
                rows_a, rows_b = await count(conn, "notes_a"), await count(conn, "notes_b")
        finally:
            for sub in subscriptions:
                await wal_reader.unsubscribe(sub)
            async with pool.connection(POOL) as conn:
                for slot, *_ in DIRECTIONS:
                    await conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
            # An origin holds a server slot (max_active_replication_origins).
            for handler in handlers.values():
                await handler.exactly_once.forget()
        nursery.cancel_scope.cancel()
    report = SyncReport(
        rows_a=rows_a,
        rows_b=rows_b,
        applied={slot: h.exactly_once.applied for slot, h in handlers.items()},
        echoes_skipped={slot: h.exactly_once.replicated for slot, h in handlers.items()},
        server_filters_origin="origin" in options,
    )
    logger.info("%s", report)
    return report


#: ``otpy run two_way_sync:app`` (from examples/): the two directions once, on the
#: database libpq's environment names (``PGHOST``, ``PGDATABASE``...); ``rows``
#: comes from ``[env.two_way_sync]``.
app = _demo.application(
    "two_way_sync", lambda env: main("", rows=int(env["rows"])), env={"rows": 5}
)


def cli() -> None:
    """``python examples/two_way_sync.py``: run against ``--dsn`` or a throw-away server."""
    args = _demo.parser(__doc__)
    args.add_argument("--rows", type=int, default=5, help="notes written into each table")
    args.add_argument(
        "--no-loop-prevention",
        action="store_true",
        help="do not skip replicated changes: watch the echo start",
    )
    options = args.parse_args()
    _demo.setup_logging(__name__)
    with _demo.database(options.dsn) as dsn:
        report = trio.run(
            lambda: main(dsn, rows=options.rows, loop_prevention=not options.no_loop_prevention)
        )
    print(report)


if __name__ == "__main__":
    cli()
