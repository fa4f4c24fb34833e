"""``otpy slots``: what replication slots exist, and how much WAL each one holds back.

A slot that nobody reads keeps every WAL segment since its ``restart_lsn``:
the server's disk fills up.  This command shows, per slot, who reads it
(``active_pid``), how far it has been acknowledged (``confirmed_flush_lsn``),
how much WAL it retains and how far behind the current WAL position it is, and
drops an abandoned slot after confirmation.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

import attrs
import psycopg

from otpy.cli.render import format_table, human_bytes
from otpy.pg.connection import TrioConnection
from otpy.pg.replication.lsn import LSN
from otpy.pg.replication.slots import SlotInfo, list_slots, validate_slot_name

__all__ = ["SlotCommandError", "drop_slot", "print_slots", "run_slots"]


class SlotCommandError(Exception):
    """``otpy slots --drop`` could not (or was told not to) drop the slot."""


async def drop_slot(conn: TrioConnection[Any], name: str) -> None:
    """Drop slot ``name``.

    Raises:
        psycopg.errors.UndefinedObject: no such slot.
        psycopg.errors.ObjectInUse: a session reads it (stop that reader first).
    """
    await conn.execute("SELECT pg_drop_replication_slot(%s)", (validate_slot_name(name),))


def _lsn_text(value: object) -> object:
    return str(value) if isinstance(value, LSN) else value


def print_slots(rows: list[SlotInfo], *, as_json: bool, out: TextIO) -> None:
    """Print ``rows`` as an aligned table, or as JSON lines with ``as_json``."""
    if as_json:
        for row in rows:
            fields = attrs.asdict(row, value_serializer=lambda _, __, v: _lsn_text(v))
            print(json.dumps(fields), file=out)
        return
    if not rows:
        print("no replication slots", file=out)
        return
    table = [
        (
            r.name,
            r.plugin or r.slot_type,
            r.database,
            "temporary" if r.temporary else "persistent",
            r.active_pid if r.active else "inactive",
            r.confirmed_flush,
            human_bytes(r.retained_bytes),
            human_bytes(r.lag_bytes),
        )
        for r in rows
    ]
    headers = ("slot", "plugin", "database", "kind", "active pid", "confirmed", "retained", "lag")
    print(format_table(headers, table), file=out)


async def run_slots(
    dsn: str,
    *,
    drop: str | None,
    yes: bool,
    as_json: bool,
    out: TextIO | None = None,
    confirm: Callable[[str], str] = input,
) -> None:
    """The ``otpy slots`` command: list, or drop ``drop`` after confirmation.

    Raises:
        SlotCommandError: the slot to drop does not exist or is in use, or the
            user declined.
    """
    out = sys.stdout if out is None else out
    async with await TrioConnection.connect(dsn, autocommit=True) as conn:
        if drop is None:
            print_slots(await list_slots(conn), as_json=as_json, out=out)
            return
        rows = {r.name: r for r in await list_slots(conn)}
        row = rows.get(drop)
        if row is None:
            known = ", ".join(rows) or "none"
            raise SlotCommandError(f"no replication slot named {drop!r} (slots: {known})")
        if row.active:
            raise SlotCommandError(
                f"slot {drop!r} is being read by backend pid {row.active_pid}: stop that "
                f"reader first (or SELECT pg_terminate_backend({row.active_pid}))"
            )
        if not yes:
            answer = confirm(
                f"Drop slot {drop!r} ({row.plugin}, retains {human_bytes(row.retained_bytes)})? "
                "Its position is lost for good. [y/N] "
            )
            if answer.strip().lower() not in ("y", "yes"):
                raise SlotCommandError("not dropped")
        try:
            await drop_slot(conn, drop)
        except psycopg.errors.ObjectInUse as exc:
            raise SlotCommandError(f"slot {drop!r} became active: {exc}") from None
        print(f"dropped slot {drop!r}", file=out)
