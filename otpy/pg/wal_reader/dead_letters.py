"""Dead letters: transactions a handler kept failing on, set aside by the ``park`` policy.

A subscription with ``on_failure={"policy": "park", "pool": "main",
"max_attempts": 3}`` writes a transaction its handler failed on three times
into a table (``otpy_dead_letters`` unless ``table`` says otherwise, created
on first use) through the otpy pool ``main``, acknowledges it and goes on.
The row holds the transaction's changes as JSON, the handler's last error,
the attempts, the slot, the commit LSN, the xid and when it was parked.
This module lists them, replays one through a handler, or discards one; the
``otpy parked`` command does the same from a shell.

Chunked transactions (more than ``max_batch_size`` changes): the handler
already processed the chunks before the failing one, so the row holds the
failing chunk *and every later chunk* of the transaction (``first_chunk``
says where it starts); replaying it delivers those changes only.

Values are stored as JSON that decodes back to the same Python values: JSON
scalars as themselves, and anything JSON has no type for as a tagged object
``{"$t": tag, "v": ...}`` (datetime, date, time, timedelta, Decimal, bytes,
UUID, IP addresses and networks, non-finite floats, tuples, mappings with
non-string keys, psycopg ranges and multiranges, ``pg_lsn``'s LSNs, enum
members and composites' named tuples (their classes rebuilt by name and
members or fields, as psycopg builds them),
:data:`~otpy.pg.replication.UNCHANGED_TOAST` and JSON ``null`` as a value).
Other objects (classes of your own) are kept as their ``repr`` under the tag
``repr`` and come back as that string.

Every function takes ``target``: a pool name, a :class:`~otpy.pg.pool.Pool`,
or an open connection (the CLI passes its own).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime as dt
import decimal
import enum
import functools
import ipaddress
import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import attrs
import psycopg
from psycopg import sql
from psycopg.types.multirange import Multirange
from psycopg.types.range import Range

from otpy.pg import pool as pg_pool
from otpy.pg.pool import Pool
from otpy.pg.replication.changes import Change, ChangeBatch
from otpy.pg.replication.errors import ReplicationError
from otpy.pg.replication.handler import HandlesReplication
from otpy.pg.replication.loaders import JSON_NULL
from otpy.pg.replication.lsn import LSN
from otpy.pg.replication.options import DEAD_LETTER_TABLE
from otpy.pg.replication.pgoutput import UNCHANGED_TOAST

__all__ = [
    "DEAD_LETTER_TABLE",
    "DeadLetter",
    "DeadLetterNotFound",
    "Target",
    "decode_value",
    "discard",
    "encode_value",
    "ensure_table",
    "get",
    "list_parked",
    "park",
    "park_more",
    "replay",
]

logger = logging.getLogger("otpy.pg.dead_letters")

#: Where dead letters are written and read: a pool name, a pool, or an open connection.
Target = str | Pool | psycopg.AsyncConnection[Any]

_TAG = "$t"


class DeadLetterNotFound(ReplicationError, LookupError):
    """No parked transaction has that id in the dead-letter table.

    It was replayed or discarded already, or the id or the table is wrong:
    list them with ``otpy parked list`` (or :func:`list_parked`).
    """


# --------------------------------------------------------------------------- values


def encode_value(value: Any) -> Any:
    """A JSON-serialisable form of a decoded column value that :func:`decode_value` reverses."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, LSN):  # before int: pg_lsn's values are LSNs
        return {_TAG: "lsn", "v": str(value)}
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return {_TAG: "float", "v": repr(value)}
        return value
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value) and _TAG not in value:
            return {k: encode_value(v) for k, v in value.items()}
        return {_TAG: "map", "v": [[encode_value(k), encode_value(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, tuple):
        fields = getattr(type(value), "_fields", None)
        if isinstance(fields, tuple):  # a composite's named tuple
            return {
                _TAG: "namedtuple",
                "type": type(value).__name__,
                "fields": list(fields),
                "v": [encode_value(v) for v in value],
            }
        return {_TAG: "tuple", "v": [encode_value(v) for v in value]}
    if isinstance(value, dt.datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return {_TAG: "time", "v": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, decimal.Decimal):
        return {_TAG: "decimal", "v": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {_TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, uuid.UUID):
        return {_TAG: "uuid", "v": str(value)}
    if isinstance(value, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return {_TAG: "ip_interface", "v": str(value)}  # before addresses: a subclass of them
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return {_TAG: "ip_address", "v": str(value)}
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return {_TAG: "ip_network", "v": str(value)}
    if isinstance(value, Range):
        return {
            _TAG: "range",
            "v": [encode_value(value.lower), encode_value(value.upper), value.bounds]
            if not value.isempty
            else None,
        }
    if isinstance(value, Multirange):
        return {_TAG: "multirange", "v": [encode_value(r) for r in value]}
    if value is UNCHANGED_TOAST:
        return {_TAG: "unchanged_toast"}
    if value is JSON_NULL:
        return {_TAG: "json_null"}
    if isinstance(value, enum.Enum):  # an enum's member: its class is rebuilt from its members
        members = [[m.name, encode_value(m.value)] for m in type(value)]
        return {_TAG: "enum", "type": type(value).__name__, "members": members, "v": value.name}
    return {_TAG: "repr", "type": type(value).__qualname__, "v": repr(value)}


def decode_value(value: Any) -> Any:
    """The Python value :func:`encode_value` encoded (a ``repr``-tagged one comes back as text)."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {k: decode_value(v) for k, v in value.items()}
    v: Any = value.get("v")
    match tag:
        case "float":
            return float(v)
        case "map":
            return {decode_value(k): decode_value(x) for k, x in v}
        case "tuple":
            return tuple(decode_value(x) for x in v)
        case "namedtuple":
            cls = _named_tuple(value["type"], tuple(value["fields"]))
            return cls(*(decode_value(x) for x in v))
        case "enum":
            return _enum(value["type"], json.dumps(value["members"]))[v]
        case "lsn":
            return LSN.parse(v)
        case "multirange":
            return Multirange(decode_value(r) for r in v)
        case "datetime":
            return dt.datetime.fromisoformat(v)
        case "date":
            return dt.date.fromisoformat(v)
        case "time":
            return dt.time.fromisoformat(v)
        case "timedelta":
            return dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2])
        case "decimal":
            return decimal.Decimal(v)
        case "bytes":
            return base64.b64decode(v)
        case "uuid":
            return uuid.UUID(v)
        case "ip_address":
            return ipaddress.ip_address(v)
        case "ip_interface":
            return ipaddress.ip_interface(v)
        case "ip_network":
            return ipaddress.ip_network(v)
        case "range":
            if v is None:
                return Range(empty=True)
            return Range(decode_value(v[0]), decode_value(v[1]), v[2])
        case "unchanged_toast":
            return UNCHANGED_TOAST
        case "json_null":
            return JSON_NULL
        case _:
            return v


@functools.cache
def _named_tuple(name: str, fields: tuple[str, ...]) -> type[tuple[Any, ...]]:
    """One class per name and fields, as psycopg makes them for a composite."""
    cls: type[tuple[Any, ...]] = collections.namedtuple(name, fields)  # type: ignore[misc]
    return cls


@functools.cache
def _enum(name: str, members: str) -> type[enum.Enum]:
    """One class per name and members (JSON), as psycopg makes one per enum type."""
    make: Any = enum.Enum  # the functional API, with a name known only at run time
    return cast(
        "type[enum.Enum]", make(name, [(n, decode_value(v)) for n, v in json.loads(members)])
    )


def _encode_change(change: Change) -> dict[str, Any]:
    return {
        "table": change.table,
        "op": change.op,
        "schema": change.schema,
        "data": encode_value(change.data),
        "old": encode_value(change.old),
        "lsn": str(change.lsn),
        "detail": encode_value(dict(change.detail)) if change.detail is not None else None,
    }


def _decode_change(
    raw: dict[str, Any], commit_lsn: LSN, xid: int | None, commit_time: dt.datetime | None
) -> Change:
    detail = raw.get("detail")
    return Change(
        raw["table"],
        raw["op"],
        decode_value(raw["data"]),
        decode_value(raw["old"]),
        raw["schema"],
        LSN(raw["lsn"]),
        commit_lsn,
        xid,
        commit_time,
        decode_value(detail) if detail is not None else None,
    )


# --------------------------------------------------------------------------- rows


@attrs.frozen
class DeadLetter:
    """One parked transaction, as stored in the dead-letter table.

    Attributes:
        id: the row's id (what :func:`replay` and :func:`discard` take).
        slot: the slot whose subscription parked it.
        commit_lsn / end_lsn / xid / commit_time: the source transaction.
        first_chunk: the chunk the changes start from: 0, the whole
            transaction (letters parked by earlier otpy versions may start later).
        complete: whether every chunk up to the commit was parked (False only
            if the reader stopped before the transaction's last chunk; it is
            then parked again when the transaction is delivered again).
        changes: the changes, decoded back into :class:`Change` values.
        error: the handler's last exception, as ``Type: message``.
        attempts: failed deliveries (and failed replays) so far.
        parked_at: when it was parked (or last failed a replay).
    """

    id: int
    slot: str
    commit_lsn: LSN
    end_lsn: LSN | None
    xid: int | None
    commit_time: dt.datetime | None
    first_chunk: int
    complete: bool
    changes: list[Change]
    error: str
    attempts: int
    parked_at: dt.datetime

    def batch(self) -> ChangeBatch:
        """The changes as the :class:`ChangeBatch` a handler receives (one final batch)."""
        return ChangeBatch(
            self.changes,
            final=True,
            chunk=self.first_chunk,
            xid=self.xid,
            commit_lsn=self.commit_lsn,
            end_lsn=self.end_lsn or self.commit_lsn,
            commit_time=self.commit_time,
        )


def _table(table: str) -> sql.Identifier:
    return sql.Identifier(*table.split("."))


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


@contextlib.asynccontextmanager
async def _transaction(target: Target) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    if isinstance(target, psycopg.AsyncConnection):
        async with target.transaction():
            yield target
    else:
        async with pg_pool.transaction(target) as conn:
            yield conn


_COLUMNS = sql.SQL(
    "id, slot, commit_lsn::text, end_lsn::text, xid, commit_time, first_chunk, complete, "
    "changes::text, error, attempts, parked_at"
)


def _row(row: tuple[Any, ...]) -> DeadLetter:
    commit_lsn = LSN(row[2])
    xid, commit_time = row[4], row[5]
    changes = [_decode_change(c, commit_lsn, xid, commit_time) for c in json.loads(row[8])]
    return DeadLetter(
        id=row[0],
        slot=row[1],
        commit_lsn=commit_lsn,
        end_lsn=LSN(row[3]) if row[3] is not None else None,
        xid=xid,
        commit_time=commit_time,
        first_chunk=row[6],
        complete=row[7],
        changes=changes,
        error=row[9],
        attempts=row[10],
        parked_at=row[11],
    )


async def ensure_table(target: Target, table: str = DEAD_LETTER_TABLE) -> None:
    """Create the dead-letter table (and its index) if it does not exist."""
    name = _table(table)
    async with _transaction(target) as conn:
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " id bigserial PRIMARY KEY,"
                " slot text NOT NULL,"
                " commit_lsn pg_lsn NOT NULL,"
                " end_lsn pg_lsn,"
                " xid bigint,"
                " commit_time timestamptz,"
                " first_chunk integer NOT NULL DEFAULT 0,"
                " complete boolean NOT NULL DEFAULT false,"
                " changes json NOT NULL,"
                " error text NOT NULL,"
                " attempts integer NOT NULL,"
                " parked_at timestamptz NOT NULL DEFAULT now(),"
                " UNIQUE (slot, commit_lsn))"
            ).format(name)
        )


async def park(
    target: Target,
    *,
    slot: str,
    batch: ChangeBatch,
    error: BaseException,
    attempts: int,
    table: str = DEAD_LETTER_TABLE,
) -> int:
    """Write a failing batch as a dead letter (replacing an earlier parking of it); return its id.

    Keyed by (slot, commit LSN): parking the same transaction again (it was
    delivered again after a crash) replaces the row instead of duplicating it.
    """
    await ensure_table(target, table)
    changes = json.dumps([_encode_change(c) for c in batch])
    async with _transaction(target) as conn:
        cur = await conn.execute(
            sql.SQL(
                "INSERT INTO {} AS d (slot, commit_lsn, end_lsn, xid, commit_time, first_chunk,"
                " complete, changes, error, attempts)"
                " VALUES (%s, %s::pg_lsn, %s::pg_lsn, %s, %s, %s, %s, %s::json, %s, %s)"
                " ON CONFLICT (slot, commit_lsn) DO UPDATE SET"
                " end_lsn = EXCLUDED.end_lsn, first_chunk = EXCLUDED.first_chunk,"
                " complete = EXCLUDED.complete, changes = EXCLUDED.changes,"
                " error = EXCLUDED.error, attempts = EXCLUDED.attempts, parked_at = now()"
                " RETURNING id"
            ).format(_table(table)),
            [
                slot,
                str(batch.commit_lsn),
                str(batch.end_lsn) if batch.final else None,
                batch.xid,
                batch.commit_time,
                batch.chunk,
                batch.final,
                changes,
                _error_text(error),
                attempts,
            ],
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def park_more(
    target: Target, letter_id: int, batch: ChangeBatch, table: str = DEAD_LETTER_TABLE
) -> None:
    """Append a later chunk of a parked transaction to its dead letter."""
    name = _table(table)
    async with _transaction(target) as conn:
        cur = await conn.execute(
            sql.SQL("SELECT changes::text FROM {} WHERE id = %s FOR UPDATE").format(name),
            [letter_id],
        )
        row = await cur.fetchone()
        if row is None:
            raise DeadLetterNotFound(f"dead letter #{letter_id} disappeared while being parked")
        changes = json.loads(row[0]) + [_encode_change(c) for c in batch]
        await conn.execute(
            sql.SQL(
                "UPDATE {} SET changes = %s::json, complete = %s, end_lsn = %s::pg_lsn"
                " WHERE id = %s"
            ).format(name),
            [
                json.dumps(changes),
                batch.final,
                str(batch.end_lsn) if batch.final else None,
                letter_id,
            ],
        )


async def list_parked(
    target: Target,
    *,
    slot: str | None = None,
    table: str = DEAD_LETTER_TABLE,
    limit: int | None = 100,
) -> list[DeadLetter]:
    """The parked transactions, oldest commit first (of ``slot`` only, if given).

    Returns an empty list when the table does not exist yet (nothing was parked).
    """
    name = _table(table)
    where = sql.SQL("WHERE slot = %s") if slot is not None else sql.SQL("")
    params: list[Any] = [slot] if slot is not None else []
    query = sql.SQL("SELECT {} FROM {} {} ORDER BY slot, commit_lsn").format(_COLUMNS, name, where)
    if limit is not None:
        query = query + sql.SQL(" LIMIT %s")
        params.append(limit)
    try:
        async with _transaction(target) as conn:
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
    except psycopg.errors.UndefinedTable:
        return []
    return [_row(r) for r in rows]


async def get(target: Target, letter_id: int, *, table: str = DEAD_LETTER_TABLE) -> DeadLetter:
    """The parked transaction ``letter_id``.

    Raises:
        DeadLetterNotFound: no such row.
    """
    async with _transaction(target) as conn:
        return await _get(conn, letter_id, table, lock=False)


async def _get(
    conn: psycopg.AsyncConnection[Any], letter_id: int, table: str, *, lock: bool
) -> DeadLetter:
    query = sql.SQL("SELECT {} FROM {} WHERE id = %s").format(_COLUMNS, _table(table))
    if lock:
        query = query + sql.SQL(" FOR UPDATE")
    try:
        cur = await conn.execute(query, [letter_id])
        row = await cur.fetchone()
    except psycopg.errors.UndefinedTable:
        row = None
    if row is None:
        raise DeadLetterNotFound(
            f"no parked transaction #{letter_id} in table {table!r}: it was replayed or "
            f"discarded already, or the id is wrong (see `otpy parked list`)"
        )
    return _row(row)


async def replay(
    target: Target,
    letter_id: int,
    handler: HandlesReplication,
    *,
    table: str = DEAD_LETTER_TABLE,
) -> DeadLetter:
    """Deliver a parked transaction to ``handler``; on success remove it and return it.

    ``handler.handle_replication_data(letter, letter.batch())`` is awaited
    with the :class:`DeadLetter` as ``ref``, while the row is locked (two
    replays of one letter cannot run at once).  If the handler raises, the
    row stays, its ``attempts`` and ``error`` are updated, and the exception
    propagates.

    Raises:
        DeadLetterNotFound: no such row.
    """
    try:
        async with _transaction(target) as conn:
            letter = await _get(conn, letter_id, table, lock=True)
            await handler.handle_replication_data(letter, letter.batch())
            await conn.execute(
                sql.SQL("DELETE FROM {} WHERE id = %s").format(_table(table)), [letter_id]
            )
    except DeadLetterNotFound:
        raise
    except Exception as exc:
        async with _transaction(target) as conn:
            await conn.execute(
                sql.SQL(
                    "UPDATE {} SET attempts = attempts + 1, error = %s, parked_at = now()"
                    " WHERE id = %s"
                ).format(_table(table)),
                [_error_text(exc), letter_id],
            )
        raise
    logger.info(
        "dead letter #%s (slot %s, commit %s) replayed and removed",
        letter_id,
        letter.slot,
        letter.commit_lsn,
        extra={"event": "dead_letter_replayed", "slot": letter.slot, "id": letter_id},
    )
    return letter


async def discard(target: Target, letter_id: int, *, table: str = DEAD_LETTER_TABLE) -> bool:
    """Delete a parked transaction without delivering it; False if there was none."""
    try:
        async with _transaction(target) as conn:
            cur = await conn.execute(
                sql.SQL("DELETE FROM {} WHERE id = %s").format(_table(table)), [letter_id]
            )
            return cur.rowcount > 0
    except psycopg.errors.UndefinedTable:
        return False
