"""``otpy tail``: live decoded changes of a publication, like pg_recvlogical but readable.

It runs the real connector: the connector application (for the WAL readers'
supervisor) and one :mod:`~otpy.pg.wal_reader` subscription whose handler
prints each change, so what you see is exactly what a handler would get.

Slots, and why:

* By default the slot is **temporary** (``otpy_tail_<pid>``): the server drops
  it when the session ends, however the process ends.
* ``--persistent`` resumes where the last run stopped, so its slot must have
  the **same name on every run**; a per-run name would leave one more slot
  behind each time, each retaining WAL until the disk is full.  The default
  is derived from the publication names (:func:`persistent_slot_name`), and
  the command says on stderr which slot it left and how to drop it.
* When the reader of stdout goes away (``| head -1``) the command stops at once
  and releases its slot; what could not be printed is not acknowledged, so a
  persistent slot shows it again next time.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import attrs
import trio

import otpy
from otpy.cli.logs import mark_started
from otpy.cli.render import change_to_json, format_change
from otpy.cli.stopping import LineOutput, until_stopped
from otpy.pg import wal_reader
from otpy.pg.app import connector_application
from otpy.pg.replication.changes import ChangeBatch
from otpy.pg.wal_reader.slots import MAX_NAME_BYTES, validate_slot_name

__all__ = ["PrintingHandler", "TailResult", "persistent_slot_name", "tail"]

_SLOT_PREFIX = "otpy_tail_"
_NOT_SLOT_CHARS = re.compile(r"[^a-z0-9_]+")


def persistent_slot_name(publications: Sequence[str]) -> str:
    """The slot ``otpy tail --persistent`` uses for ``publications``: the same on every run.

    ``otpy_tail_`` and the publication names (sorted, so their order does not
    matter) when they are valid slot characters and fit in 63 bytes; otherwise
    a readable prefix and a hash of the exact names, so that two different sets
    of publications never share a slot.
    """
    names = sorted(set(publications))
    plain = _SLOT_PREFIX + "_".join(names)
    if all(_NOT_SLOT_CHARS.search(n) is None for n in names) and len(plain) <= MAX_NAME_BYTES:
        return validate_slot_name(plain)
    digest = hashlib.sha256("\0".join(names).encode()).hexdigest()[:10]
    readable = _NOT_SLOT_CHARS.sub("_", "_".join(names).lower()).strip("_")
    room = MAX_NAME_BYTES - len(_SLOT_PREFIX) - len(digest) - 1
    return validate_slot_name(f"{_SLOT_PREFIX}{readable[:room].rstrip('_')}_{digest}")


class PrintingHandler(wal_reader.ReplicationHandler):
    """Prints every change (pretty or JSON lines); signals when ``limit`` changes were seen.

    When nobody reads the output any more, or ``limit`` cuts a transaction
    short, it sets :attr:`done` and does not return: a transaction it did not
    print whole is not acknowledged (the reader is stopped while it waits), so
    a persistent slot shows it again next time.
    """

    def __init__(
        self, out: TextIO | LineOutput, *, as_json: bool, limit: int | None = None
    ) -> None:
        self.output = out if isinstance(out, LineOutput) else LineOutput(out)
        self.as_json = as_json
        self.limit = limit
        self.seen = 0
        self.done = trio.Event()

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        if self.done.is_set():
            await trio.sleep_forever()  # stopping: what comes now is for the next run
        render = change_to_json if self.as_json else format_change
        room = len(changes) if self.limit is None else self.limit - self.seen
        lines = [render(change) for change in changes[:room]]
        if not self.output.print(*lines):
            self.done.set()
            await trio.sleep_forever()  # cancelled by the unsubscribe: nothing acknowledged
        self.seen += len(lines)
        if self.limit is not None and self.seen >= self.limit:
            self.done.set()
            if len(lines) < len(changes):
                await trio.sleep_forever()  # not all printed: not acknowledged either

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        if not self.done.is_set():
            print(f"otpy tail: replication of slot {slot_name!r} stopped", file=sys.stderr)


@attrs.frozen
class TailResult:
    """How ``otpy tail`` ended."""

    seen: int
    """Changes printed."""
    signal: int | None = None
    """The signal that stopped it (SIGINT, SIGTERM), if one did."""
    output_closed: bool = False
    """Whether it stopped because nobody read its output any more."""


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
) -> TailResult:
    """Print changes until SIGINT/SIGTERM, ``limit`` changes, ``seconds``, or the
    reader of ``out`` goes away.

    The slot is temporary (named ``otpy_tail_<pid>``) unless ``persistent``:
    a persistent slot (default name: :func:`persistent_slot_name`) remembers
    what was printed across runs.  ``ready`` is set once streaming has started
    (anything committed later will be shown); the same moment is announced on
    stderr, with the slot's name.

    Raises whatever :func:`otpy.pg.wal_reader.subscribe` raises (publication
    missing, slot in use, connection errors...).
    """
    output = LineOutput(sys.stdout if out is None else out)
    handler = PrintingHandler(output, as_json=as_json, limit=limit)
    if slot is None:
        slot = persistent_slot_name(publications) if persistent else f"otpy_tail_{os.getpid()}"
    kind = "persistent" if persistent else "temporary"
    options = {"slot_type": kind}
    stopped_by: int | None = None
    async with otpy.start_application(connector_application()):
        sub = await wal_reader.subscribe(handler, dsn, slot, list(publications), options)
        try:

            async def print_changes() -> None:
                mark_started()
                print(
                    f"otpy tail: reading {kind} slot {slot!r} "
                    f"(publications: {', '.join(publications)}); Ctrl-C stops",
                    file=sys.stderr,
                    flush=True,
                )
                if ready is not None:
                    ready.set()
                await handler.done.wait()

            stopped_by = await until_stopped(print_changes, seconds=seconds, output=output)
        finally:
            with trio.CancelScope(shield=True):
                handler.done.set()  # an orderly stop is not "replication stopped"
                await wal_reader.unsubscribe(sub)
                if persistent:
                    _say_slot_left(slot)
    return TailResult(handler.seen, stopped_by, output.closed.is_set())


def _say_slot_left(slot: str) -> None:
    print(
        f"otpy tail: left persistent slot {slot!r}: it keeps WAL until read again; the same "
        f"command resumes from it, `otpy slots --dsn ... --drop {slot}` drops it",
        file=sys.stderr,
        flush=True,
    )
