"""``otpy tail``: live decoded changes of a publication, like pg_recvlogical but readable.

It runs the real connector: the connector application (for the WAL readers'
supervisor) and one :mod:`~otpy.pg.wal_reader` subscription whose handler
prints each change, so what you see is exactly what a handler would get.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import trio

import otpy
from otpy.cli.render import change_to_json, format_change
from otpy.cli.stopping import until_stopped
from otpy.pg import wal_reader
from otpy.pg.app import connector_application
from otpy.pg.replication.changes import ChangeBatch

__all__ = ["PrintingHandler", "tail"]


class PrintingHandler(wal_reader.ReplicationHandler):
    """Prints every change (pretty or JSON lines); signals when ``limit`` changes were seen."""

    def __init__(self, out: TextIO, *, as_json: bool, limit: int | None = None) -> None:
        self.out = out
        self.as_json = as_json
        self.limit = limit
        self.seen = 0
        self.done = trio.Event()

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        render = change_to_json if self.as_json else format_change
        for change in changes:
            if self.limit is not None and self.seen >= self.limit:
                break
            print(render(change), file=self.out)
            self.seen += 1
        self.out.flush()
        if self.limit is not None and self.seen >= self.limit:
            self.done.set()

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        if not self.done.is_set():
            print(f"otpy tail: replication of slot {slot_name!r} stopped", file=sys.stderr)


async def tail(
    dsn: str,
    publications: Sequence[str],
    *,
    slot: str | None = None,
    persistent: bool = False,
    as_json: bool = False,
    limit: int | None = None,
    seconds: float | None = None,
    out: TextIO | None = None,
    ready: trio.Event | None = None,
) -> int:
    """Print changes until SIGINT/SIGTERM, ``limit`` changes or ``seconds``; return the count.

    The slot is temporary (named ``otpy_tail_<pid>``) unless ``persistent``:
    a persistent slot remembers what was printed across runs.  ``ready`` is
    set once streaming has started (anything committed later will be shown).

    Raises whatever :func:`otpy.pg.wal_reader.subscribe` raises (publication
    missing, slot in use, connection errors...).
    """
    handler = PrintingHandler(sys.stdout if out is None else out, as_json=as_json, limit=limit)
    options = {"slot_type": "persistent" if persistent else "temporary"}
    async with otpy.start_application(connector_application()):
        sub = await wal_reader.subscribe(
            handler, dsn, slot or f"otpy_tail_{os.getpid()}", list(publications), options
        )
        if ready is not None:
            ready.set()
        try:
            await until_stopped(handler.done.wait, seconds=seconds)
        finally:
            with trio.CancelScope(shield=True):
                handler.done.set()  # an orderly stop is not "replication stopped"
                await wal_reader.unsubscribe(sub)
    return handler.seen
