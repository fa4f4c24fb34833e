"""Helpers of the exactly-once tests: a copying handler with injectable faults, row counts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from wr_helpers import query

from otpy.pg.connection import TrioConnection
from otpy.pg.exactly_once import ExactlyOnceHandler
from otpy.pg.wal_reader import ChangeBatch

#: Fast restarts for tests.
FAST = {"initial": 0.02, "maximum": 0.2}


class Copier(ExactlyOnceHandler):
    """Copies ``src`` inserts into the target's ``dst`` (which has no key: duplicates show).

    ``fail_before`` / ``fail_after`` are optional hooks called with each batch
    before the target commit (inside the block: the writes roll back) and
    after it (the commit stands, the handler still raises: the reader
    redelivers a transaction the target already has).
    """

    def __init__(
        self,
        pool: Any,
        origin: str,
        *,
        table: str = "dst",
        fail_before: Callable[[ChangeBatch], None] | None = None,
        fail_after: Callable[[ChangeBatch], None] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(pool, origin, **options)
        self.table = table
        self.fail_before = fail_before
        self.fail_after = fail_after
        self.batches: list[ChangeBatch] = []
        self.stops = 0
        #: ids of every row handed over (applied now or found applied before).
        self.seen: set[int] = set()
        self._event = trio.Event()

    def _wake(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def apply(self, conn: TrioConnection[Any], changes: ChangeBatch) -> None:
        rows = [(c.data["id"], c.data["v"]) for c in changes if c.op == "insert"]
        async with conn.cursor() as cur:
            await cur.executemany(
                f"INSERT INTO {self.table} (id, v) VALUES (%s, %s)",  # type: ignore[arg-type]
                rows,
            )
        if self.fail_before is not None:
            self.fail_before(changes)

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        await super().handle_replication_data(ref, changes)
        self.batches.append(changes)
        self.seen.update(c.data["id"] for c in changes if c.op == "insert")
        self._wake()
        if self.fail_after is not None:
            self.fail_after(changes)

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        await super().handle_replication_stop(ref, slot_name)
        self.stops += 1
        self._wake()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 30.0) -> None:
        with trio.fail_after(within):
            while not predicate():
                await self._event.wait()


async def counts(source: str, target: str, src: str = "src", dst: str = "dst") -> dict[str, int]:
    """committed (source rows), applied (target rows), distinct, duplicates and lost."""
    committed = {r[0] for r in await query(source, f"SELECT id FROM {src}")}
    applied = [r[0] for r in await query(target, f"SELECT id FROM {dst}")]
    distinct = set(applied)
    return {
        "committed": len(committed),
        "applied": len(applied),
        "duplicates": len(applied) - len(distinct),
        "lost": len(committed - distinct),
        "unknown": len(distinct - committed),
    }


async def wait_applied(copier: Copier, source: str, target: str) -> dict[str, int]:
    """Wait until the copier was handed every committed source row; return :func:`counts`."""
    committed = {r[0] for r in await query(source, "SELECT id FROM src")}
    await copier.wait_for(lambda: committed <= copier.seen, 90)
    return await counts(source, target)
