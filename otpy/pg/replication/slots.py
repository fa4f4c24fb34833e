"""Replication slots and publications: names validated and quoted, slots created or found.

A ``replication=database`` session accepts only the simple query protocol, so
slot and publication names end up *inside* command text.  Nothing user-given
is ever pasted unquoted: slot names are checked against PostgreSQL's own rule
(``[a-z0-9_]``, at most 63 characters) and publication names are validated
identifiers, double-quoted, then embedded in a single-quoted option literal.

The catalog lookups (``pg_replication_slots``, ``pg_publication``) run on a
*normal* connection with real query parameters; only the replication commands
themselves (``CREATE_REPLICATION_SLOT``, ``START_REPLICATION``) run on the
walsender session.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

import attrs
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from .errors import InvalidName, PublicationMissing, SlotInUse, SlotMismatch
from .lsn import LSN

__all__ = [
    "MAX_NAME_BYTES",
    "SlotInfo",
    "check_publications",
    "ensure_slot",
    "list_slots",
    "lookup_slot",
    "quote_ident",
    "quote_literal",
    "slot_in_use_error",
    "start_replication_command",
    "validate_publication_name",
    "validate_slot_name",
]

#: NAMEDATALEN - 1: longer identifiers are truncated by PostgreSQL, which would
#: make two different names address the same object.
MAX_NAME_BYTES = 63

_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
_ACTIVE_PID = re.compile(r"active for PID (\d+)")


def validate_slot_name(name: object) -> str:
    """Return ``name`` if PostgreSQL accepts it as a replication slot name.

    PostgreSQL allows only lower-case letters, digits and underscores (at most
    63); checking here gives a clear error before any connection is made.

    Raises:
        InvalidName: otherwise.
    """
    if not isinstance(name, str) or not _SLOT_NAME.fullmatch(name):
        raise InvalidName(
            f"invalid replication slot name {name!r}: use 1-63 lower-case letters, "
            f"digits and underscores (PostgreSQL's rule for slot names)"
        )
    return name


def validate_publication_name(name: object) -> str:
    """Return ``name`` if it can be a publication (an identifier of 1-63 bytes, no NUL).

    Raises:
        InvalidName: otherwise.
    """
    if not isinstance(name, str) or not name:
        raise InvalidName(f"invalid publication name {name!r}: expected a non-empty string")
    if "\0" in name or len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidName(
            f"invalid publication name {name!r}: at most {MAX_NAME_BYTES} bytes, no NUL"
        )
    return name


def quote_ident(name: str) -> str:
    """Double-quote an identifier, doubling embedded quotes (for simple-protocol commands)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """Single-quote a string literal, doubling embedded quotes (standard_conforming_strings)."""
    if "\0" in text:
        raise InvalidName(f"NUL in literal {text!r}")
    return "'" + text.replace("'", "''") + "'"


def start_replication_command(
    slot: str, publications: Sequence[str], options: Sequence[tuple[str, str]]
) -> str:
    """The ``START_REPLICATION SLOT ... LOGICAL 0/0 (...)`` command text, fully quoted.

    Starting at ``0/0`` makes the server start at the slot's
    ``confirmed_flush_lsn``: exactly after the last acknowledged transaction.
    """
    names = ",".join(quote_ident(validate_publication_name(p)) for p in publications)
    opts = [("publication_names", names), *options]
    rendered = ", ".join(f"{quote_ident(k)} {quote_literal(v)}" for k, v in opts)
    return (
        f"START_REPLICATION SLOT {quote_ident(validate_slot_name(slot))} LOGICAL 0/0 ({rendered})"
    )


@attrs.frozen
class SlotInfo:
    """A row of ``pg_replication_slots``, with the WAL it holds back.

    The reader needs who holds the slot and where it was acknowledged;
    operators (``otpy slots``) also need how much WAL the slot retains.
    """

    name: str
    plugin: str | None
    slot_type: str
    database: str | None
    temporary: bool
    active: bool
    active_pid: int | None
    confirmed_flush: LSN | None
    """Where the slot was acknowledged up to (None for a physical slot)."""
    restart_lsn: LSN | None = None
    """The oldest WAL the slot still needs."""
    retained_bytes: int | None = None
    """WAL the server keeps for this slot: WAL insert position - ``restart_lsn``."""
    lag_bytes: int | None = None
    """How far ``confirmed_flush`` is behind the WAL insert position (everything committed)."""
    wal_status: str | None = None
    """PostgreSQL's ``wal_status`` (``reserved``, ``extended``, ``unreserved``, ``lost``)."""


_SLOTS_QUERY = """
SELECT slot_name, plugin, slot_type, database, temporary, active, active_pid,
       confirmed_flush_lsn::text, restart_lsn::text,
       pg_wal_lsn_diff(pg_current_wal_insert_lsn(), restart_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn)::bigint,
       wal_status
FROM pg_catalog.pg_replication_slots
"""


def _slot_info(row: Any) -> SlotInfo:
    name, plugin, slot_type, database, temporary, active, pid, flush, restart, *rest = row
    retained, lag, wal_status = rest
    return SlotInfo(
        name=name,
        plugin=plugin,
        slot_type=slot_type,
        database=database,
        temporary=bool(temporary),
        active=bool(active),
        active_pid=pid,
        confirmed_flush=LSN.parse(flush) if flush else None,
        restart_lsn=LSN.parse(restart) if restart else None,
        retained_bytes=retained,
        lag_bytes=lag,
        wal_status=wal_status,
    )


async def lookup_slot(conn: psycopg.AsyncConnection[Any], slot: str) -> SlotInfo | None:
    """Read the slot's row from ``pg_replication_slots``; None if there is no such slot."""
    cur = await conn.execute(_SLOTS_QUERY + "WHERE slot_name = %s", [slot])
    row = await cur.fetchone()
    return None if row is None else _slot_info(row)


async def list_slots(conn: psycopg.AsyncConnection[Any]) -> list[SlotInfo]:
    """Every replication slot of the server, by name."""
    cur = await conn.execute(_SLOTS_QUERY + "ORDER BY slot_name")
    return [_slot_info(row) for row in await cur.fetchall()]


def slot_in_use_error(slot: str, error: BaseException | None = None) -> SlotInUse:
    """Build :class:`SlotInUse` from the server's "active for PID n" error text."""
    text = str(error) if error is not None else ""
    match = _ACTIVE_PID.search(text)
    return SlotInUse(slot, int(match.group(1)) if match else None)


async def check_publications(
    conn: psycopg.AsyncConnection[Any],
    publications: Sequence[str],
    database: str,
    create: bool | Sequence[str] = False,
) -> None:
    """Make sure every publication exists; create the missing ones if asked.

    ``create`` is ``True`` (``FOR ALL TABLES``) or a list of tables
    (``"table"`` or ``"schema.table"``) for ``FOR TABLE``.

    Raises:
        PublicationMissing: some do not exist and ``create`` is false.
    """
    cur = await conn.execute(
        "SELECT pubname FROM pg_catalog.pg_publication WHERE pubname = ANY(%s)",
        [list(publications)],
    )
    found = {row[0] for row in await cur.fetchall()}
    missing = [p for p in publications if p not in found]
    if not missing:
        return
    if not create:
        raise PublicationMissing(missing, database)
    if create is True:
        target: sql.Composable = sql.SQL("FOR ALL TABLES")
    else:
        tables = [sql.Identifier(*t.split(".", 1)) for t in create]
        target = sql.SQL("FOR TABLE {}").format(sql.SQL(", ").join(tables))
    for name in missing:
        with contextlib.suppress(pg_errors.DuplicateObject):  # created concurrently: fine
            await conn.execute(
                sql.SQL("CREATE PUBLICATION {} {}").format(sql.Identifier(name), target)
            )


async def ensure_slot(
    repl: psycopg.AsyncConnection[Any],
    conn: psycopg.AsyncConnection[Any],
    slot: str,
    *,
    temporary: bool,
    database: str,
) -> LSN:
    """Create the slot (temporary, or persistent if missing) and return its confirmed LSN.

    ``repl`` is the replication session (a temporary slot belongs to it),
    ``conn`` a normal connection for catalog lookups.  A persistent slot that
    exists is reused; the returned LSN is where streaming will start.

    Raises:
        SlotInUse: another session streams from the slot (or owns the
            temporary slot of that name).
        SlotMismatch: the existing slot uses another plugin or database, or a
            persistent slot exists where a temporary one was asked for.
    """
    validate_slot_name(slot)
    if not temporary:
        info = await lookup_slot(conn, slot)
        if info is not None:
            return _usable(info, slot, database, temporary=False)
    command = f"CREATE_REPLICATION_SLOT {quote_ident(slot)} "
    command += "TEMPORARY LOGICAL pgoutput" if temporary else "LOGICAL pgoutput"
    command += " NOEXPORT_SNAPSHOT"
    try:
        cur = await repl.execute(command.encode())
    except pg_errors.DuplicateObject:
        info = await lookup_slot(conn, slot)
        if info is None:  # dropped in between: let the caller retry
            raise SlotInUse(slot, None, "the slot was being dropped; retry") from None
        return _usable(info, slot, database, temporary=temporary)
    row = await cur.fetchone()
    assert row is not None
    return LSN.parse(row[1])


def _usable(info: SlotInfo, slot: str, database: str, *, temporary: bool) -> LSN:
    if info.plugin != "pgoutput" or info.slot_type != "logical":
        raise SlotMismatch(
            f"replication slot {slot!r} exists but is a {info.slot_type} slot with plugin "
            f"{info.plugin!r}; the WAL reader needs a logical pgoutput slot (drop it or pick "
            f"another name)"
        )
    if info.database != database:
        raise SlotMismatch(
            f"replication slot {slot!r} belongs to database {info.database!r}, not {database!r}"
        )
    if info.active or info.temporary:
        raise SlotInUse(slot, info.active_pid)
    if temporary:
        raise SlotMismatch(
            f"a persistent replication slot {slot!r} exists; subscribe with "
            f"slot_type='persistent' to use it, or pick another name for a temporary slot"
        )
    return info.confirmed_flush or LSN(0)
