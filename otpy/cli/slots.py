"""``otpy slots``: what replication slots exist, and how much WAL each one holds back.

A slot that nobody reads keeps every WAL segment since its ``restart_lsn``:
the server's disk fills up.  This command shows, per slot, who reads it
(``active_pid``), how far it has been acknowledged (``confirmed_flush_lsn``),
how much WAL it retains and how far behind everything committed it is, the
server's verdict on it (``wal_status``; on PostgreSQL 17+ also
``invalidation_reason``, ``failover`` and ``synced``), and drops an abandoned
slot after confirmation.

Lag is measured from ``pg_current_wal_insert_lsn()`` (see
:mod:`otpy.pg.wal_reader.slots`): ``pg_current_wal_lsn()`` is where WAL has
been *written*, which under ``synchronous_commit = off`` can sit before the
last commit, so a slot would look caught up while it is not.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import attrs
import psycopg

from otpy.cli.errors import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, CliError
from otpy.cli.render import format_table, human_bytes
from otpy.pg.connection import TrioConnection
from otpy.pg.replication.lsn import LSN
from otpy.pg.wal_reader.slots import SlotInfo, list_slots, validate_slot_name

__all__ = [
    "NoAnswer",
    "NotDropped",
    "SlotBusy",
    "SlotCommandError",
    "SlotNotFound",
    "drop_slot",
    "print_slots",
    "run_slots",
    "server_slot_columns",
]


class SlotCommandError(CliError):
    """``otpy slots --drop`` could not (or was told not to) drop the slot."""


class SlotNotFound(SlotCommandError):
    """There is no slot of that name (exit 66): check the name in ``otpy slots``."""

    code = EXIT_NOT_FOUND


class SlotBusy(SlotCommandError):
    """A session reads the slot (exit 69): stop that reader first."""

    code = EXIT_UNAVAILABLE


class NotDropped(SlotCommandError):
    """The question was answered with something other than yes (exit 1)."""

    code = EXIT_FAILED


class NoAnswer(SlotCommandError):
    """The question could not be asked: stdin is closed (exit 66); pass ``--yes``."""

    code = EXIT_NOT_FOUND


#: Columns of ``pg_replication_slots`` that :class:`SlotInfo` reads as None on
#: servers without them, by the release that added them (``server_version_num``):
#: shown only where the server has them.
_EXTRA_COLUMNS: Sequence[tuple[int, str]] = (
    (170000, "invalidation_reason"),
    (170000, "failover"),
    (170000, "synced"),
)


def server_slot_columns(server_version: int) -> tuple[str, ...]:
    """The extra ``pg_replication_slots`` columns a server of ``server_version`` has."""
    return tuple(name for since, name in _EXTRA_COLUMNS if server_version >= since)


async def drop_slot(conn: TrioConnection[Any], name: str) -> None:
    """Drop slot ``name``.

    Raises:
        psycopg.errors.UndefinedObject: no such slot.
        psycopg.errors.ObjectInUse: a session reads it (stop that reader first).
    """
    await conn.execute("SELECT pg_drop_replication_slot(%s)", (validate_slot_name(name),))


def _lsn_text(value: object) -> object:
    return str(value) if isinstance(value, LSN) else value


def _yes_no(value: object) -> str | None:
    return None if value is None else ("yes" if value else "no")


def print_slots(
    rows: list[SlotInfo],
    *,
    as_json: bool,
    out: TextIO,
    columns: Sequence[str] = (),
) -> None:
    """Print ``rows`` as an aligned table, or as JSON lines with ``as_json``.

    ``columns`` are the newer columns this server has (:func:`server_slot_columns`);
    the others are left out rather than shown as empty.
    """
    absent = {name for _, name in _EXTRA_COLUMNS} - set(columns)
    if as_json:
        for row in rows:
            fields = attrs.asdict(row, value_serializer=lambda _, __, v: _lsn_text(v))
            print(json.dumps({k: v for k, v in fields.items() if k not in absent}), file=out)
        return
    if not rows:
        print("no replication slots", file=out)
        return
    headers = ["slot", "plugin", "database", "kind", "active pid", "confirmed", "retained", "lag"]
    headers += ["wal status"]
    shown = {"invalidation_reason": "invalidated", "failover": "failover", "synced": "synced"}
    headers += [shown[c] for c in columns]
    table = []
    for r in rows:
        table.append(
            [
                r.name,
                r.plugin or r.slot_type,
                r.database,
                "temporary" if r.temporary else "persistent",
                r.active_pid if r.active else "inactive",
                r.confirmed_flush,
                human_bytes(r.retained_bytes),
                human_bytes(r.lag_bytes),
                r.wal_status,
                *(
                    _yes_no(getattr(r, c)) if c in ("failover", "synced") else getattr(r, c)
                    for c in columns
                ),
            ]
        )
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
        SlotNotFound: no slot of that name.
        SlotBusy: a session reads it.
        NotDropped: the user declined.
        NoAnswer: the question could not be answered (stdin closed).
    """
    out = sys.stdout if out is None else out
    async with await TrioConnection.connect(dsn, autocommit=True) as conn:
        if drop is None:
            columns = server_slot_columns(conn.info.server_version)
            print_slots(
                await list_slots(conn),
                as_json=as_json,
                out=out,
                columns=columns,
            )
            return
        rows = {r.name: r for r in await list_slots(conn)}
        row = rows.get(drop)
        if row is None:
            known = ", ".join(rows) or "none"
            raise SlotNotFound(f"no replication slot named {drop!r} (slots: {known})")
        if row.active:
            raise SlotBusy(
                f"slot {drop!r} is being read by backend pid {row.active_pid}: stop that "
                f"reader first (or SELECT pg_terminate_backend({row.active_pid}))"
            )
        if not yes:
            question = (
                f"Drop slot {drop!r} ({row.plugin}, retains {human_bytes(row.retained_bytes)})? "
                "Its position is lost for good. [y/N] "
            )
            try:
                answer = confirm(question)
            except EOFError:
                print(file=out)  # end the question's line
                raise NoAnswer(
                    f"slot {drop!r} not dropped: no answer to the question (stdin is closed); "
                    "pass --yes to drop without asking"
                ) from None
            if answer.strip().lower() not in ("y", "yes"):
                raise NotDropped(f"slot {drop!r} not dropped")
        try:
            await drop_slot(conn, drop)
        except psycopg.errors.ObjectInUse as exc:
            raise SlotBusy(f"slot {drop!r} became active: {exc}") from None
        except psycopg.errors.UndefinedObject:
            raise SlotNotFound(f"slot {drop!r} was dropped by someone else meanwhile") from None
        print(f"dropped slot {drop!r}", file=out)
