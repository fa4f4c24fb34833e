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

from otpy.pg.replication.errors import (
    InvalidName,
    InvalidOptions,
    PublicationMissing,
    SlotInUse,
    SlotInvalidated,
    SlotLost,
    SlotMismatch,
)
from otpy.pg.replication.lsn import LSN
from otpy.pg.replication.options import PublicationSpec

__all__ = [
    "MAX_NAME_BYTES",
    "SlotInfo",
    "check_publications",
    "ensure_slot",
    "list_slots",
    "lookup_slot",
    "quote_ident",
    "quote_literal",
    "slot_gone_error",
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
    invalidation_reason: str | None = None
    """Why PostgreSQL invalidated the slot (PostgreSQL 17+: ``wal_removed``,
    ``rows_removed``, ``wal_level_insufficient``, 18: ``idle_timeout``); on
    older servers ``"wal_removed"`` when ``wal_status`` is ``lost`` and
    ``"rows_removed"`` for a conflicting slot (16), else None."""
    failover: bool | None = None
    """Whether the slot is a failover slot, copied to standbys (PostgreSQL 17+; else None)."""
    synced: bool | None = None
    """Whether this is a standby's copy of a primary's failover slot (17+; else None)."""
    two_phase: bool | None = None
    """Whether the slot decodes prepared transactions at PREPARE (15+; else None)."""

    @property
    def invalidated(self) -> bool:
        """Whether the slot can never stream again (its WAL or catalog rows are gone)."""
        return self.invalidation_reason is not None


# The insert position: under synchronous_commit=off the write position
# (pg_current_wal_lsn) can sit before the last commit, hiding lag.
_SLOTS_QUERY = """
SELECT (to_jsonb(pg_replication_slots) ->> 'failover')::bool,
       (to_jsonb(pg_replication_slots) ->> 'synced')::bool,
       (to_jsonb(pg_replication_slots) ->> 'two_phase')::bool,
       to_jsonb(pg_replication_slots) ->> 'invalidation_reason',
       (to_jsonb(pg_replication_slots) ->> 'conflicting')::bool,
       slot_name, plugin, slot_type, database, temporary, active, active_pid,
       confirmed_flush_lsn::text, restart_lsn::text,
       pg_wal_lsn_diff(pg_current_wal_insert_lsn(), restart_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn)::bigint,
       wal_status
FROM pg_catalog.pg_replication_slots
"""
# The first five columns exist only on newer servers (failover, synced,
# invalidation_reason: 17+, conflicting: 16+, two_phase: 15+): read by name from
# the row as JSON, one query fits every version.


def _slot_info(row: Any) -> SlotInfo:
    failover, synced, two_phase, *row = row
    reason, conflicting, name, plugin, slot_type, database, temporary, active, pid, *rest = row
    flush, restart, retained, lag, wal_status = rest
    if reason is None and wal_status == "lost":
        reason = "wal_removed"
    elif reason is None and conflicting:
        reason = "rows_removed"
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
        invalidation_reason=reason,
        failover=failover,
        synced=synced,
        two_phase=two_phase,
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


async def slot_gone_error(
    conn: psycopg.AsyncConnection[Any], slot: str, error: psycopg.Error, *, temporary: bool
) -> Exception:
    """What a failed ``START_REPLICATION`` means for the slot: the terminal error, or ``error``.

    PostgreSQL refuses an invalidated slot with SQLSTATE 55000 ("can no
    longer get changes from replication slot"), a missing one with 42704;
    the slot's catalog row (read on the normal connection ``conn``) says
    which, whatever the server's message language.
    """
    try:
        info = await lookup_slot(conn, slot)
    except psycopg.Error:
        info = None
        exists = True  # unknown: judge by the error alone
    else:
        exists = info is not None
    if info is not None and info.invalidated:
        return SlotInvalidated(slot, info.invalidation_reason, _one_line(error))
    if isinstance(error, pg_errors.ObjectNotInPrerequisiteState) and (
        "can no longer get changes" in str(error)
    ):
        return SlotInvalidated(slot, None, _one_line(error))
    if isinstance(error, pg_errors.UndefinedObject) and not exists and not temporary:
        return SlotLost(slot)
    return error


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


async def check_publications(
    conn: psycopg.AsyncConnection[Any],
    publications: Sequence[str],
    database: str,
    create: bool | Sequence[str] | PublicationSpec = False,
) -> None:
    """Make sure every publication exists; create the missing ones if asked.

    ``create`` is ``True`` (``FOR ALL TABLES``), a list of tables
    (``"table"`` or ``"schema.table"``) for ``FOR TABLE``, or a
    :class:`~.options.PublicationSpec` (tables with column lists and row
    filters, publication parameters).

    Raises:
        PublicationMissing: some do not exist and ``create`` is false.
        InvalidOptions: the server is too old for a parameter of ``create``.
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
    if isinstance(create, PublicationSpec):
        target = _publication_target(create, conn.info.server_version)
    elif create is True:
        target = sql.SQL("FOR ALL TABLES")
    else:
        tables = [sql.Identifier(*t.split(".", 1)) for t in create]
        target = sql.SQL("FOR TABLE {}").format(sql.SQL(", ").join(tables))
    for name in missing:
        with contextlib.suppress(pg_errors.DuplicateObject):  # created concurrently: fine
            await conn.execute(
                sql.SQL("CREATE PUBLICATION {} {}").format(sql.Identifier(name), target)
            )


def _publication_target(spec: PublicationSpec, server_version: int) -> sql.Composable:
    """``FOR ... [WITH (...)]`` of a :class:`PublicationSpec`: names quoted, filters as given.

    Raises:
        InvalidOptions: the server is too old for a parameter (row filters and
            column lists: PostgreSQL 15; ``publish_generated_columns``: 18).
    """

    def needs(what: str, least: int) -> None:
        if server_version < least:
            raise InvalidOptions(
                f"create_publication: {what} needs PostgreSQL {least // 10000} or later, the "
                f"server runs {server_version // 10000}; drop it or create the publication yourself"
            )

    if spec.tables is None:
        target: sql.Composable = sql.SQL("FOR ALL TABLES")
    else:
        parts = []
        for table in spec.tables:
            part: sql.Composable = sql.Identifier(*table.name.split(".", 1))
            if table.columns is not None:
                needs("a column list", 150000)
                columns = sql.SQL(", ").join(map(sql.Identifier, table.columns))
                part = sql.SQL("{} ({})").format(part, columns)
            if table.where is not None:
                needs("a row filter (where)", 150000)
                part = sql.SQL("{} WHERE ({})").format(part, sql.SQL(table.where))
            parts.append(part)
        target = sql.SQL("FOR TABLE {}").format(sql.SQL(", ").join(parts))
    params = []
    if spec.publish_via_partition_root is not None:
        value = "true" if spec.publish_via_partition_root else "false"
        params.append(sql.SQL("publish_via_partition_root = {}").format(sql.SQL(value)))
    if spec.publish_generated_columns is not None:
        needs("publish_generated_columns", 180000)
        params.append(
            sql.SQL("publish_generated_columns = {}").format(
                sql.SQL(spec.publish_generated_columns)
            )
        )
    if params:
        target = sql.SQL("{} WITH ({})").format(target, sql.SQL(", ").join(params))
    return target


async def ensure_slot(
    repl: psycopg.AsyncConnection[Any],
    conn: psycopg.AsyncConnection[Any],
    slot: str,
    *,
    temporary: bool,
    database: str,
    create_missing: bool = True,
    failover: bool = False,
    two_phase: bool = False,
) -> LSN:
    """Create the slot (temporary, or persistent if missing) and return its confirmed LSN.

    ``repl`` is the replication session (a temporary slot belongs to it),
    ``conn`` a normal connection for catalog lookups.  A persistent slot that
    exists is reused; the returned LSN is where streaming will start.  A
    missing persistent slot is created only with ``create_missing`` (a first
    start): a reader that already read the slot must not re-create it.

    With ``failover`` (PostgreSQL 17+) a new slot is created with FAILOVER and
    an existing one that is not a failover slot is altered to be one, so that
    standbys with ``sync_replication_slots`` keep a copy of it.

    A slot once read with ``two_phase`` stays two-phase (PostgreSQL keeps the
    flag and sends prepared transactions at PREPARE even to a reader that did
    not ask): without ``two_phase`` such a slot is refused, since its handler
    would receive ``prepare`` changes it does not expect.

    Raises:
        SlotLost: a persistent slot is missing and ``create_missing`` is false.
        SlotInvalidated: the persistent slot exists but PostgreSQL invalidated it.
        SlotInUse: another session streams from the slot (or owns the
            temporary slot of that name).
        SlotMismatch: the existing slot uses another plugin or database, a
            persistent slot exists where a temporary one was asked for, or
            the slot is two-phase and ``two_phase`` is off.
    """
    validate_slot_name(slot)
    if not temporary:
        info = await lookup_slot(conn, slot)
        if info is not None:
            confirmed = _usable(info, slot, database, temporary=False)
            if info.two_phase and not two_phase:
                raise SlotMismatch(
                    f"replication slot {slot!r} decodes prepared transactions at PREPARE "
                    f"(a reader enabled two_phase on it, and PostgreSQL keeps it): subscribe "
                    f"with two_phase=True, or drop the slot (PostgreSQL 18: ALTER_REPLICATION_SLOT "
                    f"with TWO_PHASE false, once no transaction is prepared)"
                )
            if failover and not info.failover:
                await repl.execute(
                    f"ALTER_REPLICATION_SLOT {quote_ident(slot)} (FAILOVER true)".encode()
                )
            return confirmed
        if not create_missing:
            raise SlotLost(slot)
    command = f"CREATE_REPLICATION_SLOT {quote_ident(slot)} "
    command += "TEMPORARY LOGICAL pgoutput" if temporary else "LOGICAL pgoutput"
    command += " (SNAPSHOT 'nothing', FAILOVER true)" if failover else " NOEXPORT_SNAPSHOT"
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
    if info.invalidated:
        raise SlotInvalidated(slot, info.invalidation_reason, f"wal_status {info.wal_status}")
    if info.active or info.temporary:
        raise SlotInUse(slot, info.active_pid)
    if temporary:
        raise SlotMismatch(
            f"a persistent replication slot {slot!r} exists; subscribe with "
            f"slot_type='persistent' to use it, or pick another name for a temporary slot"
        )
    return info.confirmed_flush or LSN(0)
