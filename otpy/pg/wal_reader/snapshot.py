"""Initial snapshots: the rows that already exist, then every change after them.

A change stream alone cannot build a copy of a table that already has rows.
With the reader option ``snapshot="initial"`` the reader that *creates* its
slot asks PostgreSQL to export the slot's snapshot (``CREATE_REPLICATION_SLOT
... EXPORT_SNAPSHOT``): the database exactly as it was at the slot's
consistent point.  Every published table is read under that snapshot and
handed to the handler as :class:`~otpy.pg.replication.changes.Change` values
with op ``"read"``; only then does ``START_REPLICATION`` run, and the stream
starts at the consistent point.  A change is either in the snapshot (committed
before the point) or in the stream (committed after it), never both, never
neither: that is the whole consistency argument (``docs/snapshots.md``).

Mechanics, and why:

* The exported snapshot lives only while the walsender session that created
  the slot stays idle: no command may run on it until the snapshot is read,
  so the tables are read on *other* connections, each of which imports the
  snapshot (``BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT``).
* Tables are split into ranges of heap blocks (``ctid >= '(a,0)' AND ctid <
  '(b,0)'``, a TID range scan on PostgreSQL 14+).  Under one snapshot a row
  version has exactly one ctid, so the ranges partition the rows exactly,
  whatever the table's keys (a table without a primary key is no special
  case), and each range is a sequential read with no index and no sort.
  Keyset pagination by primary key would add an index scan and a sort per
  page and buys nothing here: an exported snapshot cannot be resumed by a
  later session anyway (see *Resuming* below).  On older servers a table is
  one range.
* Each range is read with ``COPY (SELECT ...) TO STDOUT`` and decoded by a
  :func:`table_decoder`: a :class:`ValueDecoder` told about each table as
  pgoutput's Relation message describes it, with the user types fetched as
  the stream fetches them, so a snapshot row equals the streamed row of the
  same contents, value for value (infinity, JSON null, enums...).  psycopg
  parses each row with the decoder's fast loaders; a row they refuse is split
  into its fields (:func:`copy_fields_binary`, :func:`copy_fields_text`) and
  decoded by the stream's careful path.  Rows are cut into batches of
  ``snapshot_chunk_size``; batches go through a bounded channel to one task
  that calls the handler, one call at a time.  A slow handler stops the COPY
  from being read (TCP backpressure), so memory stays bounded by
  ``snapshot_chunk_size * (2 * snapshot_parallelism + 1)`` rows whatever the
  table size.
* ``snapshot_parallelism`` connections read ranges at once.

Snapshot batches (see :func:`is_snapshot_batch`): ``xid`` None, ``commit_lsn``
and ``end_lsn`` ``0/0`` (nothing to acknowledge), every change op ``"read"``;
``chunk`` counts the batches of the snapshot from 0 and ``final`` marks the
last one.  Chunk 0 is always delivered, possibly empty: it says "a snapshot
(re)starts here".

Resuming: progress of a persistent slot's snapshot is a row of the table named
by ``snapshot_progress_table`` (default ``otpy_snapshot_progress`` in the
connection's default schema, created if missing), keyed by slot name, with
state ``in_progress`` or ``done``.  ``in_progress`` is written *before* the
slot is created and ``done`` only after the handler returned from the final
snapshot batch, before ``START_REPLICATION``.  A reader that finds its slot
with an ``in_progress`` row knows the slot never streamed and its snapshot is
gone (exported snapshots die with their session): it drops the slot and starts
over with a new one and a new snapshot.  So snapshot rows are delivered
at-least-once (a restart delivers them again, from chunk 0), and the stream
never starts as if an unfinished snapshot had finished.  A temporary slot dies
with its session: every start of a temporary-slot reader creates a slot, so
every start reads a snapshot.

Backfills (:func:`backfill`, ``wal_reader.backfill``) re-read tables while the
reader streams, with the DBLog watermark method: keyset pages by primary key
(decoded by a :func:`table_decoder` in the stream's format),
each selected between a low and a high ``pg_logical_emit_message`` watermark
and delivered by the reader, in stream order, when it meets the high one,
minus the rows the stream changed in between (:func:`on_watermarks`).
"""

from __future__ import annotations

import itertools
import math
import re
import struct
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import psycopg
import trio
from psycopg import errors as pg_errors
from psycopg import pq, sql
from psycopg.abc import AdaptContext

from otpy._util import raise_unwrapped
from otpy.pg.connection import TrioConnection
from otpy.pg.copy_both import REPLICATION_SESSION_SETTINGS, finish_copy_both
from otpy.pg.replication.changes import Change, ChangeBatch, make_change
from otpy.pg.replication.errors import ReplicationError, SlotInUse
from otpy.pg.replication.loaders import FORMAT_DEPENDENT
from otpy.pg.replication.lsn import LSN
from otpy.pg.replication.options import ReaderOptions
from otpy.pg.replication.pgoutput import Column, Relation, TupleData
from otpy.pg.replication.values import ValueDecoder, row_builder

from .slots import lookup_slot, quote_ident
from .stream import ReplicationSession, fetch_types

__all__ = [
    "WATERMARK_PREFIX",
    "BackfillError",
    "SnapshotError",
    "SnapshotRun",
    "SnapshotTable",
    "backfill",
    "copy_fields_binary",
    "copy_fields_text",
    "copy_in_binary",
    "is_backfill_batch",
    "is_snapshot_batch",
    "on_watermarks",
    "published_tables",
    "read_snapshot",
    "table_decoder",
]

_ZERO = LSN(0)
#: Ranges per reading connection: a few per connection balance uneven tables.
_RANGES_PER_CONNECTION = 4
#: TID range scans (``ctid >= ... AND ctid < ...`` without a full scan): PostgreSQL 14.
_TID_RANGE_SCAN = 140000


class SnapshotError(ReplicationError):
    """The initial snapshot cannot be taken as asked.

    The message says what: a table in ``snapshot_tables`` that no publication
    of the subscription publishes, or a progress table that cannot be created
    (grant CREATE on its schema, or name one in a schema you may write with
    the ``snapshot_progress_table`` option).
    """


def is_snapshot_batch(batch: ChangeBatch) -> bool:
    """Whether ``batch`` holds snapshot rows (op ``"read"``) rather than a transaction.

    Snapshot batches carry no transaction: ``xid`` None and ``end_lsn`` 0/0
    (a streamed transaction always has an ``end_lsn``).
    """
    return batch.xid is None and batch.end_lsn == _ZERO and batch.commit_lsn == _ZERO


@attrs.frozen
class SnapshotTable:
    """A published table to read: its columns as published and their type oids.

    ``types`` are the columns' own type oids (a domain's, not its base
    type's), as pgoutput's Relation message gives them: rows are decoded by a
    :class:`~otpy.pg.replication.values.ValueDecoder` that knows the table as
    the stream's does.  ``row_filter`` is the publication's ``WHERE``
    (PostgreSQL 15+), so the snapshot holds the rows the stream would publish;
    ``pages`` is the table's size in blocks when it was listed, used only to
    split it; ``oid`` is the table's; ``partitioned`` is True for a
    partitioned table (published with ``publish_via_partition_root``).
    """

    schema: str
    name: str
    columns: tuple[str, ...]
    types: tuple[int, ...]
    row_filter: str | None = None
    pages: int = 0
    oid: int = 0
    partitioned: bool = False

    @property
    def source(self) -> sql.Composable:
        """The table to ``SELECT`` from: ``ONLY`` it, unless it is a partitioned root.

        A publication lists an inheritance child as a table of its own (the
        stream names its rows by it), so reading the parent must not read
        the child's rows too; a partitioned root is listed instead of its
        partitions (``publish_via_partition_root``) and is read whole.
        """
        name = sql.Identifier(self.schema, self.name)
        return name if self.partitioned else sql.SQL("ONLY {}").format(name)

    @property
    def qualified(self) -> str:
        """``schema.name``, as given in ``snapshot_tables``."""
        return f"{self.schema}.{self.name}"


# pg_publication_tables has attnames and rowfilter from PostgreSQL 15 on: read
# them by name from the row as JSON, so one query fits every version.  A table
# in two publications with different column lists gets the union, as the
# walsender sends it.
_TABLES_QUERY = """
WITH pub AS (
    SELECT schemaname, tablename,
           -- a table without columns has a NULL attnames: JSON null, not an array
           NULLIF(to_jsonb(p) -> 'attnames', 'null') AS attnames,
           to_jsonb(p) ->> 'rowfilter' AS rowfilter
    FROM pg_catalog.pg_publication_tables p
    WHERE pubname = ANY(%s)
)
SELECT pub.schemaname, pub.tablename, c.oid, c.relkind = 'p' AS partitioned,
       (pg_catalog.pg_relation_size(c.oid)
        / pg_catalog.current_setting('block_size')::int)::int AS pages,
       bool_or(pub.attnames IS NULL) AS all_columns,
       array_agg(DISTINCT a.attname) FILTER (WHERE a.attname IS NOT NULL),
       -- one filter per publication; a table in several is read with none if any has none
       CASE WHEN bool_or(pub.rowfilter IS NULL) THEN NULL
            ELSE string_agg(DISTINCT '(' || pub.rowfilter || ')', ' OR ') END
FROM pub
JOIN pg_catalog.pg_namespace n ON n.nspname = pub.schemaname
JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pub.tablename
LEFT JOIN LATERAL jsonb_array_elements_text(pub.attnames) AS a(attname) ON true
GROUP BY pub.schemaname, pub.tablename, c.oid, c.relkind
ORDER BY pub.schemaname, pub.tablename
"""

# Generated columns are published from PostgreSQL 18 on, when named by the
# publication's column list or its publish_generated_columns: attnames then
# lists them.  Before 18 attnames lists them too, but pgoutput never sends them.
_COLUMNS_QUERY = """
SELECT a.attname, a.atttypid, a.attgenerated <> ''
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def _split_name(name: str) -> tuple[str | None, str]:
    schema, _, table = name.rpartition(".")
    return (schema or None), table


async def published_tables(
    conn: psycopg.AsyncConnection[Any],
    publications: Sequence[str],
    only: Sequence[str] | None = None,
    *,
    exclude: Sequence[str] = (),
) -> list[SnapshotTable]:
    """The tables the publications publish (or the ``only`` ones among them), by name.

    ``only`` and ``exclude`` name tables as ``"t"`` (any schema) or ``"schema.t"``.

    Raises:
        SnapshotError: a table of ``only`` is not published by the publications.
    """
    cur = await conn.execute(_TABLES_QUERY, [list(publications)])
    rows = await cur.fetchall()
    generated_published = conn.info.server_version >= 180000
    tables: list[SnapshotTable] = []

    def matches(schema: str, table: str, name: str) -> bool:
        want_schema, want_table = _split_name(name)
        return want_table == table and want_schema in (None, schema)

    for schema, table, oid, partitioned, pages, all_columns, attnames, row_filter in rows:
        if only is not None and not any(matches(schema, table, n) for n in only):
            continue
        if any(matches(schema, table, n) for n in exclude):
            continue
        ccur = await conn.execute(_COLUMNS_QUERY, [oid])
        published = set(attnames or ())
        columns = [
            (n, t)
            for n, t, generated in await ccur.fetchall()
            if (not generated or generated_published) and (all_columns or n in published)
        ]
        tables.append(
            SnapshotTable(
                schema=schema,
                name=table,
                columns=tuple(n for n, _ in columns),
                types=tuple(t for _, t in columns),
                row_filter=row_filter,
                pages=max(pages or 0, 0),
                oid=oid,
                partitioned=partitioned,
            )
        )
    if only is not None:
        for name in only:
            if not any(matches(t.schema, t.name, name) for t in tables):
                raise SnapshotError(
                    f"snapshot_tables names {name!r}, which publications "
                    f"{', '.join(publications)} do not publish: add it to a publication "
                    f"(ALTER PUBLICATION ... ADD TABLE) or remove it from snapshot_tables"
                )
    return tables


@attrs.frozen
class _Range:
    """Heap blocks [first, last) of a table (``last`` None: to the end)."""

    table: SnapshotTable
    first: int | None
    last: int | None


def _ranges(tables: Sequence[SnapshotTable], parallelism: int, server: int) -> list[_Range]:
    """Split the tables into block ranges, about ``_RANGES_PER_CONNECTION`` per connection.

    The last range of a table is open-ended: the table may have grown since
    its size was taken.  Largest ranges first, so that
    the last connections to finish do not start a big range late.
    """
    if parallelism == 1 or server < _TID_RANGE_SCAN:
        return [_Range(t, None, None) for t in tables]
    total = sum(t.pages for t in tables)
    step = max(1, math.ceil(total / (parallelism * _RANGES_PER_CONNECTION)))
    out: list[_Range] = []
    for t in sorted(tables, key=lambda t: -t.pages):
        if t.pages <= step:
            out.append(_Range(t, None, None))
            continue
        bounds = list(range(0, t.pages, step))
        for i, first in enumerate(bounds):
            last = bounds[i + 1] if i + 1 < len(bounds) else None
            out.append(_Range(t, first or None, last))
    return out


def _copy_query(r: _Range, binary: bool) -> sql.Composed:
    t = r.table
    where: list[sql.Composable] = []
    if r.first is not None:
        where.append(sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({r.first},0)")))
    if r.last is not None:
        where.append(sql.SQL("ctid < {}::tid").format(sql.Literal(f"({r.last},0)")))
    if t.row_filter is not None:
        # The publication's own filter, as PostgreSQL deparsed it (trusted catalog text).
        where.append(sql.SQL("(" + t.row_filter + ")"))
    query = sql.SQL("COPY (SELECT {} FROM {}").format(
        sql.SQL(", ").join(map(sql.Identifier, t.columns)) if t.columns else sql.SQL(""),
        t.source,
    )
    if where:
        query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where)
    return query + sql.SQL(") TO STDOUT (FORMAT BINARY)" if binary else ") TO STDOUT")


def table_decoder(tables: Sequence[SnapshotTable]) -> ValueDecoder:
    """A :class:`ValueDecoder` that knows ``tables`` as the stream's decoder knows them.

    Each table is described by the Relation pgoutput would send for it (its
    OID, its published columns with their own type OIDs), so a row read here
    decodes exactly as a streamed row of the table: otpy's loaders (infinity,
    JSON null, money, point...), the user types once fetched
    (:func:`~.stream.fetch_types` on :meth:`ValueDecoder.missing_types`), and
    a value no loader takes delivered as text, never an error.
    """
    decoder = ValueDecoder()
    for t in tables:
        columns = tuple(
            Column(0, name, oid, -1) for name, oid in zip(t.columns, t.types, strict=True)
        )
        decoder.add_relation(Relation(None, t.oid, t.schema, t.name, "d", columns))
    return decoder


def copy_in_binary(decoder: ValueDecoder, table: SnapshotTable, stream_binary: bool) -> bool:
    """Whether to read ``table`` with binary COPY and still get the stream's values.

    A binary stream's values are loaded in binary, so binary it is.  A text
    stream's values are the text loaders', which binary COPY (cheaper to
    parse) gives as well unless a type has no binary loader or its two
    formats differ (:data:`~otpy.pg.replication.loaders.FORMAT_DEPENDENT`).
    """
    if stream_binary:
        return True
    adapters = decoder.fast_context().adapters
    return all(
        oid not in FORMAT_DEPENDENT and adapters.get_loader(oid, pq.Format.BINARY) is not None
        for oid in table.types
    )


async def _open_reader(
    connect_kwargs: dict[str, Any], snapshot: str, context: AdaptContext | None = None
) -> TrioConnection[Any]:
    """A connection in a read-only transaction that imported ``snapshot``.

    The session settings of the replication connection are pinned first, so
    text values are formatted (and parsed by psycopg) exactly as streamed ones;
    ``context`` gives it the loaders of the snapshot's decoder.
    """
    conn = await TrioConnection.connect(autocommit=True, context=context, **connect_kwargs)
    try:
        for name, value in REPLICATION_SESSION_SETTINGS.items():
            await conn.execute(sql.SQL("SET {} TO {}").format(sql.Identifier(name), value))
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        await conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    except BaseException:
        with trio.CancelScope(shield=True):
            await conn.close()
        raise
    return conn


async def read_snapshot(
    connect_kwargs: dict[str, Any],
    snapshot: str,
    tables: Sequence[SnapshotTable],
    deliver: Callable[[ChangeBatch], Awaitable[None]],
    *,
    chunk_size: int = 5000,
    parallelism: int = 1,
    server_version: int = _TID_RANGE_SCAN,
    decoder: ValueDecoder | None = None,
    binary: bool = False,
) -> int:
    """Read ``tables`` under the exported ``snapshot`` into ``deliver``; return the row count.

    ``deliver`` is awaited one batch at a time, in the order the batches were
    read (tables and ranges interleave when ``parallelism`` > 1); chunk 0 is
    always delivered (empty if there is no row) and the last batch has
    ``final`` True.  The snapshot must stay valid until this returns (its
    exporting session idle).  Rows are decoded by ``decoder`` (default: a
    :func:`table_decoder` of ``tables``, without user types) as a stream in
    the ``binary`` format would decode them.
    """
    if decoder is None:
        decoder = table_decoder(tables)
    context = decoder.fast_context()
    in_binary = {t: copy_in_binary(decoder, t, binary) for t in tables}
    ranges = _ranges(tables, parallelism, server_version)
    todo = iter(ranges)
    send, recv = trio.open_memory_channel[ChangeBatch](parallelism)
    rows = 0

    async def worker(send: trio.MemorySendChannel[ChangeBatch]) -> None:
        async with send:
            conn = await _open_reader(connect_kwargs, snapshot, context)
            try:
                for r in todo:  # shared iterator: each range is read by one worker
                    await _read_range(conn, r, send, chunk_size, decoder, in_binary[r.table])
            finally:
                # A read-only transaction: nothing to commit; closing mid-COPY
                # (the handler failed) must not try a rollback first.
                with trio.CancelScope(shield=True):
                    await conn.close()

    async def consume() -> None:
        nonlocal rows
        held: ChangeBatch | None = None  # one batch held back, to mark the last final
        chunk = 0
        async for batch in recv:
            batch.chunk = chunk
            chunk += 1
            rows += len(batch)
            if held is not None:
                await deliver(held)
            held = batch
        if held is None:
            held = _batch([], 0)
        held.final = True
        await deliver(held)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            async with send:
                for _ in range(min(parallelism, max(len(ranges), 1))):
                    nursery.start_soon(worker, send.clone())
    except BaseExceptionGroup as group:
        raise_unwrapped(group)  # the handler's own error, as from a streamed batch
    return rows


#: The binary COPY format's trailer: a 16-bit field count of -1 (psycopg's parse gives None).
_BINARY_TRAILER = b"\xff\xff"
#: The binary COPY format's header: signature, flags, header extension length.
_BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_TEXT_ESCAPES = {
    ord("b"): b"\b", ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r",
    ord("t"): b"\t", ord("v"): b"\v",
}  # fmt: skip
_ESCAPED = re.compile(rb"\\(.)", re.DOTALL)


def copy_fields_binary(data: bytes) -> TupleData:
    """The fields of one binary COPY row, as pgoutput's tuple data of binary values.

    The first row carries the file header (signature, flags, extension)
    before its field count.  Raises ``ValueError`` on a malformed row.
    """
    pos = 0
    if data.startswith(_BINARY_SIGNATURE):
        (extension,) = _I32.unpack_from(data, len(_BINARY_SIGNATURE) + 4)
        pos = len(_BINARY_SIGNATURE) + 8 + extension
    (count,) = _I16.unpack_from(data, pos)
    pos += 2
    kinds = bytearray()
    values: list[bytes | None] = []
    for _ in range(count):
        (size,) = _I32.unpack_from(data, pos)
        pos += 4
        if size < 0:
            kinds.append(110)  # 'n'
            values.append(None)
        else:
            kinds.append(98)  # 'b'
            values.append(data[pos : pos + size])
            pos += size
    if pos != len(data):
        raise ValueError(f"binary COPY row of {len(data)} bytes, {count} fields end at {pos}")
    return TupleData(bytes(kinds), tuple(values))


def copy_fields_text(data: bytes) -> TupleData:
    """The fields of one text COPY row, as pgoutput's tuple data of text values.

    Tab-separated, ending in a newline, ``\\N`` for NULL; COPY TO escapes a
    backslash and the control characters ``\\b \\f \\n \\r \\t \\v``.
    """
    kinds = bytearray()
    values: list[bytes | None] = []
    for field in data.removesuffix(b"\n").split(b"\t"):
        if field == b"\\N":
            kinds.append(110)  # 'n'
            values.append(None)
            continue
        if b"\\" in field:
            field = _ESCAPED.sub(lambda m: _TEXT_ESCAPES.get(m[1][0], m[1]), field)
        kinds.append(116)  # 't'
        values.append(field)
    return TupleData(bytes(kinds), tuple(values))


def _batch(changes: list[Change], chunk: int) -> ChangeBatch:
    return ChangeBatch(
        changes, final=False, chunk=chunk, xid=None, commit_lsn=_ZERO, end_lsn=_ZERO,
        commit_time=None,
    )  # fmt: skip


async def _read_range(
    conn: TrioConnection[Any],
    r: _Range,
    send: trio.MemorySendChannel[ChangeBatch],
    chunk_size: int,
    decoder: ValueDecoder,
    binary: bool,
) -> None:
    """COPY one range into batches of ``chunk_size`` changes sent to ``send``.

    The server sends one CopyData message per row.  Rows libpq already
    buffered are taken straight from it (``get_copy_data(1)``: no wait, no
    scheduler pass per row); psycopg waits only when the buffer is empty.
    psycopg's own async ``rows()`` waits once per row, which makes it 2-3x
    slower than its synchronous twin; this loop decodes at the twin's speed.

    Rows are parsed by psycopg with the decoder's fast loaders (the
    connection's); a row they refuse (an infinity, a value no loader takes)
    is decoded again by ``decoder`` from its fields, as the stream decodes
    such a row: the same values, never an error.
    """
    t = r.table
    name, schema, columns, oid = t.name, t.schema, t.columns, t.oid
    make = make_change
    changes: list[Change] = []
    append = changes.append
    get_copy_data = conn.pgconn.get_copy_data
    fields = copy_fields_binary if binary else copy_fields_text
    async with conn.cursor().copy(_copy_query(r, binary)) as copy:
        copy.set_types(list(t.types))
        parse = copy.formatter.parse_row
        # COPY of an explicit column list: a row has exactly ``columns``, made
        # into a dict by the reader's row function (half of dict(zip(...))).
        row = row_builder(columns, parse, f"{schema}.{name}, snapshot")
        data: bytes | bytearray | memoryview
        while True:
            nbytes, data = get_copy_data(1)
            if nbytes == 0:  # nothing buffered: let psycopg wait (and see the end)
                data = await copy.read()
                if not data:
                    break
            elif nbytes < 0:  # the end, taken from the buffer: collect the result
                await finish_copy_both(conn)
                break
            try:
                values = row(data)
            except Exception:
                if data == _BINARY_TRAILER:  # parse gave None: the end of binary COPY
                    continue
                values = decoder.decode(oid, fields(bytes(data)))
            append(make(name, "read", values, schema))
            if len(changes) >= chunk_size:
                await send.send(_batch(changes, 0))
                changes = []
                append = changes.append
    if changes:
        await send.send(_batch(changes, 0))


# ---------------------------------------------------------------------- progress


class _Progress:
    """The snapshot progress rows of persistent slots, in the source database."""

    def __init__(self, name: str) -> None:
        schema, table = _split_name(name)
        self.table = sql.Identifier(schema, table) if schema else sql.Identifier(table)
        self.name = name

    async def ensure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (slot text PRIMARY KEY, state text NOT NULL, "
                    "consistent_point pg_lsn, rows bigint, started_at timestamptz NOT NULL, "
                    "finished_at timestamptz)"
                ).format(self.table)
            )
        except (pg_errors.InsufficientPrivilege, pg_errors.InvalidSchemaName) as exc:
            raise SnapshotError(
                f"cannot create the snapshot progress table {self.name!r} "
                f"({' '.join(str(exc).split())}): grant CREATE on its schema, create it "
                f"beforehand, or name another with the snapshot_progress_table option"
            ) from None
        except pg_errors.UniqueViolation:  # created concurrently by another reader
            pass

    async def state(self, conn: psycopg.AsyncConnection[Any], slot: str) -> str | None:
        cur = await conn.execute(
            sql.SQL("SELECT state FROM {} WHERE slot = %s").format(self.table), [slot]
        )
        row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def begin(self, conn: psycopg.AsyncConnection[Any], slot: str) -> None:
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (slot, state, started_at) VALUES (%s, 'in_progress', now()) "
                "ON CONFLICT (slot) DO UPDATE SET state = 'in_progress', started_at = now(), "
                "consistent_point = NULL, rows = NULL, finished_at = NULL"
            ).format(self.table),
            [slot],
        )

    async def finish(
        self, conn: psycopg.AsyncConnection[Any], slot: str, point: LSN, rows: int
    ) -> None:
        await conn.execute(
            sql.SQL(
                "UPDATE {} SET state = 'done', consistent_point = %s::pg_lsn, rows = %s, "
                "finished_at = now() WHERE slot = %s"
            ).format(self.table),
            [str(point), rows, slot],
        )


# ---------------------------------------------------------------------- the run


class SnapshotRun:
    """One reader incarnation's snapshot: prepared in ``init``, read before streaming.

    :meth:`prepare` (bounded by ``connect_timeout``) connects and decides: a
    slot that exists and is not mid-snapshot is started as usual (no
    snapshot); otherwise the slot is (re)created with an exported snapshot and
    :attr:`pending` is True.  :meth:`run` (unbounded: tables may be large)
    reads the snapshot into the handler and records it done; the reader then
    starts replication from :attr:`consistent_point`.
    """

    def __init__(self, session: ReplicationSession) -> None:
        self.session = session
        self.options: ReaderOptions = session.options
        self.progress = _Progress(self.options.snapshot_progress_table)
        #: True once :meth:`prepare` decided that a snapshot must be read.
        self.pending = False
        #: The exported snapshot's name (``initial_only``: a transaction's export).
        self.snapshot_name: str | None = None
        #: Where the slot's stream starts (the snapshot is the database just before).
        self.consistent_point = _ZERO
        #: Rows delivered by :meth:`run`.
        self.rows = 0
        self._exporter: TrioConnection[Any] | None = None
        #: The tables to read, resolved by :meth:`prepare`.
        self.tables: list[SnapshotTable] = []

    @property
    def stream_after(self) -> bool:
        """Whether streaming follows the snapshot (False for ``initial_only``)."""
        return self.options.snapshot != "initial_only"

    async def prepare(self) -> None:
        """Connect; create the slot with an exported snapshot if one must be read.

        Raises:
            SnapshotError: the progress table cannot be created.
            SlotInUse: the slot to start over is held by another session.

        Otherwise it raises what
        :meth:`~otpy.pg.wal_reader.stream.ReplicationSession.start` raises.
        """
        session = self.session
        if session.repl is None:
            await session.connect()
        assert session.repl is not None and session.meta is not None
        meta = session.meta
        # Resolved first: a bad snapshot_tables fails subscribe before any slot exists.
        self.tables = await published_tables(
            meta,
            session.publications,
            self.options.snapshot_tables,
            exclude=[self.options.snapshot_progress_table],
        )
        if not self.stream_after:
            await self._export_without_slot()
            return
        if not self.options.temporary:
            await self._lock(meta)
            await self.progress.ensure(meta)
            state = await self.progress.state(meta, session.slot)
            info = await lookup_slot(meta, session.slot)
            if info is not None and state != "in_progress":
                await session.start()  # the snapshot was read (or never asked for): stream
                return
            if info is not None:
                await self._drop_unfinished(meta, info.active, info.active_pid)
            elif state != "in_progress" and not session.create_missing:
                await session.start()  # raises SlotLost: never re-create a read slot
                return
            await self.progress.begin(meta, session.slot)
        session.phase = "creating the slot with a snapshot"
        command = f"CREATE_REPLICATION_SLOT {quote_ident(session.slot)} "
        command += "TEMPORARY LOGICAL pgoutput" if self.options.temporary else "LOGICAL pgoutput"
        try:
            cur = await session.repl.execute((command + " EXPORT_SNAPSHOT").encode())
        except pg_errors.DuplicateObject:
            raise SlotInUse(session.slot, None, "the slot was created concurrently") from None
        row = await cur.fetchone()
        assert row is not None
        self.consistent_point = LSN.parse(row[1])
        self.snapshot_name = row[2]
        session.prepared_start = self.consistent_point
        self.pending = True

    async def _lock(self, meta: psycopg.AsyncConnection[Any]) -> None:
        """Take the slot's snapshot lock for this reader's life, or :class:`SlotInUse`.

        A slot is not *active* while its exported snapshot is read (the
        walsender releases it after CREATE_REPLICATION_SLOT), so "in progress
        and inactive" alone cannot tell a dead snapshot from a live one in
        another process.  The live one holds this session-level advisory lock
        (on its catalog connection, released when the reader's session closes).
        """
        cur = await meta.execute(
            "SELECT pg_catalog.pg_try_advisory_lock("
            "pg_catalog.hashtext('otpy.snapshot'), pg_catalog.hashtext(%s))",
            [self.session.slot],
        )
        row = await cur.fetchone()
        if not (row and row[0]):
            raise SlotInUse(
                self.session.slot, None, "another session is reading its initial snapshot"
            )

    async def _drop_unfinished(
        self, meta: psycopg.AsyncConnection[Any], active: bool, pid: int | None
    ) -> None:
        """Drop a slot whose snapshot never finished: it never streamed, its snapshot is gone."""
        if active:
            raise SlotInUse(self.session.slot, pid)
        try:
            await meta.execute(
                "SELECT pg_catalog.pg_drop_replication_slot(%s)", [self.session.slot]
            )
        except pg_errors.ObjectInUse as exc:
            raise SlotInUse(self.session.slot, None, str(exc)) from None
        except pg_errors.UndefinedObject:
            pass  # dropped meanwhile: what we wanted

    async def _export_without_slot(self) -> None:
        """``initial_only``: a REPEATABLE READ transaction exports the snapshot, no slot."""
        conn = await TrioConnection.connect(autocommit=True, **self.session.connect_kwargs)
        try:
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur = await conn.execute("SELECT pg_catalog.pg_export_snapshot()")
            row = await cur.fetchone()
            assert row is not None
        except BaseException:
            with trio.CancelScope(shield=True):
                await conn.close()
            raise
        self._exporter = conn
        self.snapshot_name = row[0]
        self.pending = True

    async def run(self, deliver: Callable[[ChangeBatch], Awaitable[None]]) -> int:
        """Read the snapshot into ``deliver``; record it done; return the row count."""
        session = self.session
        assert self.snapshot_name is not None and session.meta is not None
        session.phase = "reading the snapshot"
        meta = session.meta
        try:
            decoder = table_decoder(self.tables)
            if decoder.missing_types():
                await fetch_types(meta, decoder, session.slot)
            self.rows = await read_snapshot(
                session.connect_kwargs,
                self.snapshot_name,
                self.tables,
                deliver,
                chunk_size=self.options.snapshot_chunk_size,
                parallelism=self.options.snapshot_parallelism,
                server_version=meta.info.server_version,
                decoder=decoder,
                binary=self.options.binary,
            )
        finally:
            await self.close()
        if self.stream_after and not self.options.temporary:
            await self.progress.finish(meta, session.slot, self.consistent_point, self.rows)
        self.pending = False
        return self.rows

    async def close(self) -> None:
        """Close the exporting transaction of ``initial_only``, if open."""
        conn, self._exporter = self._exporter, None
        if conn is not None:
            with trio.CancelScope(shield=True):
                await conn.close()


# ---------------------------------------------------------------------- backfills

#: Prefix of the watermark messages of backfills (``pg_logical_emit_message``).
WATERMARK_PREFIX = "otpy.watermark"


class BackfillError(SnapshotError):
    """A backfill cannot run as asked.

    The message says what: the subscription was made without
    ``messages=True`` (watermarks travel as logical decoding messages), a
    table has no primary key (chunks are pages of keys), or the subscription
    ended while a chunk waited for its high watermark.
    """


def is_backfill_batch(batch: ChangeBatch) -> bool:
    """Whether ``batch`` holds rows of a backfill (op ``"read"``), delivered at a high watermark.

    Like a snapshot batch it has no transaction (``xid`` None, ``end_lsn`` 0/0),
    but its ``commit_lsn`` is the LSN of the high watermark it was delivered at.
    """
    return batch.xid is None and batch.end_lsn == _ZERO and batch.commit_lsn != _ZERO


@attrs.define(eq=False)
class _Window:
    """One chunk of a backfill, between its low and high watermark."""

    id: str
    table: SnapshotTable
    key: tuple[str, ...]
    chunk: int
    rows: list[dict[str, Any]] | None = None
    is_open: bool = False
    truncated: bool = False
    changed: set[tuple[Any, ...]] = attrs.field(factory=set)
    delivered: int = 0
    done: trio.Event = attrs.field(factory=trio.Event)


#: Open backfill windows per subscription (the subscription object, kept weakly).
_WINDOWS: weakref.WeakKeyDictionary[Any, dict[str, _Window]] = weakref.WeakKeyDictionary()


def _key(row: Mapping[str, Any], key: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(row.get(k) for k in key)


async def on_watermarks(sub: Any, batch: ChangeBatch) -> None:
    """Apply the backfill watermark rule to one batch, in stream order, before the handler.

    Called by the reader for every batch when the subscription has
    ``messages=True``.  Removes watermark messages from ``batch`` (in place:
    the handler never sees them, whoever emitted them), records the keys the
    stream changes inside open windows, and at a high watermark delivers the
    window's chunk minus those keys, as a backfill batch, to the handler.  A
    chunk row the stream changed inside the window is older than (or as old
    as) what the stream already delivered: dropping it is what keeps the
    handler from seeing an older version after a newer one (DBLog).
    """
    windows = _WINDOWS.get(sub)
    marks: list[Change] | None = None
    for change in batch:
        if change.op == "message" and change.table == WATERMARK_PREFIX:
            marks = [] if marks is None else marks
            marks.append(change)
        elif windows:
            for w in windows.values():
                if not w.is_open or change.table != w.table.name:
                    continue
                if change.schema != w.table.schema:
                    continue
                if change.op == "truncate":
                    w.truncated = True
                    continue
                if change.data is not None:
                    w.changed.add(_key(change.data, w.key))
                if change.old is not None:
                    w.changed.add(_key(change.old, w.key))
    if marks is None:
        return
    batch[:] = [c for c in batch if not (c.op == "message" and c.table == WATERMARK_PREFIX)]
    for mark in marks:
        kind, _, wid = bytes(mark.data).decode().partition(":")
        window = windows.get(wid) if windows else None
        if window is None:  # another backfill's, or one already delivered (a replay)
            continue
        if kind == "low":
            window.is_open = True
        elif kind == "high" and window.is_open and window.rows is not None:
            await _deliver_window(sub, window, mark.lsn)
            windows.pop(wid, None)  # type: ignore[union-attr]


async def _deliver_window(sub: Any, w: _Window, at: LSN) -> None:
    """Hand the window's chunk, minus the rows the stream changed in it, to the handler."""
    assert w.rows is not None
    rows = [] if w.truncated else [r for r in w.rows if _key(r, w.key) not in w.changed]
    if rows:
        out = ChangeBatch(
            [Change(w.table.name, "read", r, None, w.table.schema) for r in rows],
            final=False,
            chunk=w.chunk,
            xid=None,
            commit_lsn=at,
            end_lsn=_ZERO,
            commit_time=None,
        )
        await sub.handler.handle_replication_data(sub, out)
    w.delivered = len(rows)
    w.done.set()


_KEY_QUERY = """
SELECT a.attname FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = %s::regclass AND i.indisprimary
ORDER BY array_position(i.indkey::int2[], a.attnum)
"""


async def backfill(
    sub: Any,
    tables: Sequence[str] | None = None,
    *,
    where: str | None = None,
    chunk_size: int | None = None,
    chunk_timeout: float = 60.0,
) -> int:
    """Re-read ``tables`` (all published ones if None) into the handler while it streams.

    The DBLog watermark method: for each chunk of ``chunk_size`` rows (keyset
    pages by primary key, optionally restricted by ``where``, an SQL condition
    you write — it is pasted into the query, never pass user input), a low
    watermark is emitted with ``pg_logical_emit_message``, the chunk is
    selected, a high watermark is emitted, and when the reader meets the high
    watermark in the stream it delivers the chunk minus the rows the stream
    changed between the two watermarks.  The handler gets those rows as
    ``"read"`` changes in batches recognised by :func:`is_backfill_batch`,
    at their place in the stream: never an older version after a newer one.

    Returns the number of rows delivered.  The subscription must have been
    made with ``messages=True``.

    Raises:
        BackfillError: no ``messages=True``; a table without a primary key;
            a chunk not delivered within ``chunk_timeout`` seconds (the reader
            is restarting, or far behind), or the subscription ended.
        SnapshotError: a table is not published by the subscription.
    """
    if not sub.options.messages:
        raise BackfillError(
            f"backfill of slot {sub.slot!r} needs a subscription made with messages=True: "
            f"its watermarks are logical decoding messages"
        )
    size = chunk_size or sub.options.snapshot_chunk_size
    windows = _WINDOWS.setdefault(sub, {})
    delivered = 0
    conn = await TrioConnection.connect(autocommit=True, **sub.connect_kwargs)
    try:
        for name, value in REPLICATION_SESSION_SETTINGS.items():
            await conn.execute(sql.SQL("SET {} TO {}").format(sql.Identifier(name), value))
        keyed: list[tuple[SnapshotTable, tuple[str, ...]]] = []
        for table in await published_tables(conn, sub.publications, tables):
            cur = await conn.execute(_KEY_QUERY, [table.qualified])
            key = tuple(row[0] for row in await cur.fetchall())
            if not key:  # checked for every table before any is read
                raise BackfillError(
                    f"table {table.qualified} has no primary key: a backfill pages by key "
                    f"(use a snapshot subscription for it instead)"
                )
            keyed.append((table, key))
        decoder = table_decoder([table for table, _ in keyed])
        if decoder.missing_types():
            await fetch_types(conn, decoder, sub.slot)
        for table, key in keyed:
            delivered += await _backfill_table(
                conn, sub, windows, table, key, where, size, chunk_timeout, decoder
            )
    finally:
        with trio.CancelScope(shield=True):
            await conn.close()
    return delivered


async def _backfill_table(
    conn: TrioConnection[Any],
    sub: Any,
    windows: dict[str, _Window],
    table: SnapshotTable,
    key: tuple[str, ...],
    where: str | None,
    size: int,
    chunk_timeout: float,
    decoder: ValueDecoder,
) -> int:
    """Backfill one table, page by page; the rows delivered.

    Rows are decoded by ``decoder`` from the raw values, in the stream's
    format, as the stream decodes them.  The next page starts after the
    last key *as the server prints it* (the key columns again, as text):
    a decoded key is not always a faithful literal (``infinity`` is loaded
    as ``datetime.max``), and paging after a wrong one would read rows twice
    or skip them.
    """
    binary = bool(sub.options.binary)
    kind = 98 if binary else 116  # 'b' or 't', as pgoutput tags a value
    width = len(table.columns)
    columns = sql.SQL(", ").join(
        [
            *map(sql.Identifier, table.columns),
            *(
                sql.SQL("{}::text AS {}").format(sql.Identifier(k), sql.Identifier(f"otpy key {j}"))
                for j, k in enumerate(key)
            ),
        ]
    )
    keys = sql.SQL(", ").join(map(sql.Identifier, key))
    emit = "SELECT pg_catalog.pg_logical_emit_message(true, %s, %s)"
    last: list[str] | None = None
    delivered = 0
    for chunk in itertools.count():
        conditions: list[sql.Composable] = []
        if where:
            conditions.append(sql.SQL("(" + where + ")"))
        if last is not None:
            conditions.append(
                sql.SQL("({}) > ({})").format(
                    keys, sql.SQL(", ").join(sql.Literal(v) for v in last)
                )
            )
        if table.row_filter is not None:
            conditions.append(sql.SQL("(" + table.row_filter + ")"))
        query = sql.SQL("SELECT {} FROM {}").format(columns, table.source)
        if conditions:
            query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions)
        query += sql.SQL(" ORDER BY {} LIMIT {}").format(keys, sql.Literal(size))
        w = _Window(uuid.uuid4().hex, table, key, chunk)
        windows[w.id] = w
        try:
            await conn.execute(emit, [WATERMARK_PREFIX, f"low:{w.id}"])
            cur = await conn.execute(query, binary=binary)
            result = cur.pgresult
            assert result is not None
            rows: list[dict[str, Any]] = []
            for i in range(result.ntuples):
                raw = tuple(result.get_value(i, c) for c in range(width))
                kinds = bytes(110 if v is None else kind for v in raw)  # 'n' for NULL
                rows.append(decoder.decode(table.oid, TupleData(kinds, raw)))
            if rows:  # the key's text, read in either format: text is its own binary form
                at = result.ntuples - 1
                last = [
                    bytes(result.get_value(at, width + j) or b"").decode() for j in range(len(key))
                ]
            w.rows = rows
            await conn.execute(emit, [WATERMARK_PREFIX, f"high:{w.id}"])
            with trio.move_on_after(chunk_timeout) as scope:
                await w.done.wait()
            if scope.cancelled_caught:
                raise BackfillError(
                    f"backfill of {table.qualified} (slot {sub.slot!r}): chunk {chunk} was not "
                    f"delivered within {chunk_timeout} s (reader restarting, far behind, or "
                    f"unsubscribed)"
                )
        finally:
            windows.pop(w.id, None)
        delivered += w.delivered
        if len(rows) < size:
            return delivered
    raise AssertionError("unreachable")
