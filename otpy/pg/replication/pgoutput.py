"""Decoder of the ``pgoutput`` logical replication protocol (PostgreSQL 15-18, versions 1-4).

Each XLogData payload is one pgoutput message: a type byte and fixed fields
(see "Logical Replication Message Formats" in the PostgreSQL manual).  This
module turns those bytes into frozen attrs values and back (the encoder exists
for tests, fuzzing and for fabricating streams; the server never needs it).

Two layers:

* :func:`decode_message` is a pure function of (bytes, ``in_stream``).  In
  protocol >= 2 with ``streaming`` on, the data messages (Relation, Type,
  Insert, Update, Delete, Truncate, Message) carry the transaction id *only
  inside a stream*; nothing in the message itself says so, hence the flag.
* :class:`PgOutputDecoder` tracks Stream Start / Stream Stop and passes the
  flag for you: use it on a live stream.

Protocol 4 (PostgreSQL 16+) changes one message: with ``streaming = parallel``
the Stream Abort carries the abort's LSN and time after the xids (25 bytes
instead of 9).  Nothing else in a message says which version produced it, so
the decoder accepts every version's form of every message.

Column values stay raw bytes here (:class:`TupleData`); :mod:`.values` turns
them into Python objects.  Malformed or truncated input raises
:class:`~.errors.DecodeError` with the byte offset, and nothing else.
"""

from __future__ import annotations

import enum
import struct
import types
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final, Literal, TypeAlias

import attrs

from .errors import DecodeError
from .lsn import LSN, lsn_from_u64
from .timestamps import PG_EPOCH, datetime_to_pg_timestamp

__all__ = [
    "KIND_BINARY",
    "KIND_NULL",
    "KIND_TEXT",
    "KIND_UNCHANGED",
    "UNCHANGED_TOAST",
    "Begin",
    "BeginPrepare",
    "Column",
    "ColumnValue",
    "Commit",
    "CommitPrepared",
    "Delete",
    "Insert",
    "Message",
    "Origin",
    "PgOutputDecoder",
    "PgOutputMessage",
    "Prepare",
    "Relation",
    "RollbackPrepared",
    "StreamAbort",
    "StreamCommit",
    "StreamPrepare",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "TupleData",
    "Type",
    "UnchangedToast",
    "Update",
    "decode_message",
    "encode_message",
    "is_compiled",
]


class UnchangedToast(enum.Enum):
    """Type of the :data:`UNCHANGED_TOAST` sentinel (an enum, so it is a true singleton)."""

    UNCHANGED_TOAST = "unchanged-toast"

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


#: A column whose value is TOASTed and was not changed by an UPDATE: PostgreSQL
#: does not send it.  It is *not* NULL (the column may hold 1 GB of text): a
#: consumer must keep its previous value.  Never falsy-confusable with ``None``.
UNCHANGED_TOAST: Final = UnchangedToast.UNCHANGED_TOAST

#: One column of a tuple: ``None`` (SQL NULL), :data:`UNCHANGED_TOAST`, or the
#: raw bytes (text or binary form, see :attr:`TupleData.kinds`).
ColumnValue: TypeAlias = bytes | Literal[UnchangedToast.UNCHANGED_TOAST] | None

# Column kinds as they appear on the wire (the bytes of TupleData.kinds), so that
# code inspecting a tuple compares with names rather than magic numbers.
#: ``n``: SQL NULL.
KIND_NULL: Final = ord("n")
#: ``u``: unchanged TOASTed value, not sent.
KIND_UNCHANGED: Final = ord("u")
#: ``t``: value in text format.
KIND_TEXT: Final = ord("t")
#: ``b``: value in binary format (``binary`` option).
KIND_BINARY: Final = ord("b")


@attrs.frozen(slots=True)
class TupleData:
    """The columns of one row as sent by pgoutput.

    Attributes:
        kinds: one byte per column: ``n`` null, ``u`` unchanged TOAST, ``t``
            text, ``b`` binary (binary mode sends ``t`` for types without a
            binary send function, so the format is per column).
        values: per column ``None``, :data:`UNCHANGED_TOAST` or the bytes.
    """

    kinds: bytes
    values: tuple[ColumnValue, ...]

    def __len__(self) -> int:
        return len(self.values)


@attrs.frozen(slots=True)
class Column:
    """A column of a :class:`Relation`.

    Attributes:
        flags: 1 when the column is part of the replica identity key.
        name: column name.
        type_oid: OID of the column's type (a domain's own OID for domains).
        type_modifier: ``atttypmod`` (e.g. varchar length + 4), -1 if none.
    """

    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        """Whether the column belongs to the replica identity (sent in ``K`` tuples)."""
        return bool(self.flags & 1)


@attrs.frozen(slots=True)
class Begin:
    """Start of a transaction (non-streamed, or the final commit of nothing streamed)."""

    final_lsn: LSN
    commit_time: datetime
    xid: int


@attrs.frozen(slots=True)
class Commit:
    """End of a transaction: acknowledge ``end_lsn`` once it has been handled."""

    flags: int
    commit_lsn: LSN
    end_lsn: LSN
    commit_time: datetime


@attrs.frozen(slots=True)
class Origin:
    """Replication origin of the transaction (sent after Begin when it has one)."""

    commit_lsn: LSN
    name: str


@attrs.frozen(slots=True)
class Relation:
    """Describes a table; sent before its first change in a session and after DDL.

    A new Relation for a known OID replaces the old description (columns may
    have been added, dropped or retyped): caches keyed by OID must be rebuilt.

    Attributes:
        xid: transaction id when sent inside a stream (protocol >= 2), else None.
        oid: relation OID, the key the data messages refer to.
        namespace: schema name (empty string means ``pg_catalog``).
        name: table name.
        replica_identity: ``d`` default, ``n`` nothing, ``f`` full, ``i`` index.
        columns: the published columns, in tuple order.
    """

    xid: int | None
    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@attrs.frozen(slots=True)
class Type:
    """Announces a non-built-in type used by a following Relation (enum, composite...).

    Its values cannot be decoded without the type's catalog information: fetch
    it on a normal connection and register it (see :mod:`.values`).
    """

    xid: int | None
    oid: int
    namespace: str
    name: str


@attrs.frozen(slots=True)
class Insert:
    """A row inserted into the relation ``relation_oid``."""

    xid: int | None
    relation_oid: int
    new: TupleData


@attrs.frozen(slots=True)
class Update:
    """A row updated.

    Attributes:
        key: the old replica-identity key columns (``K``) when the key changed
            under REPLICA IDENTITY DEFAULT/INDEX; other columns are null.
        old: the whole old row (``O``) under REPLICA IDENTITY FULL.
        new: the new row; TOASTed columns not changed are :data:`UNCHANGED_TOAST`.
    """

    xid: int | None
    relation_oid: int
    key: TupleData | None
    old: TupleData | None
    new: TupleData


@attrs.frozen(slots=True)
class Delete:
    """A row deleted: exactly one of ``key`` (identity columns) or ``old`` (FULL) is set."""

    xid: int | None
    relation_oid: int
    key: TupleData | None
    old: TupleData | None


@attrs.frozen(slots=True)
class Truncate:
    """TRUNCATE of one or more relations in one statement.

    Attributes:
        options: raw option bits (1 = CASCADE, 2 = RESTART IDENTITY).
    """

    xid: int | None
    options: int
    relation_oids: tuple[int, ...]

    @property
    def cascade(self) -> bool:
        """TRUNCATE ... CASCADE."""
        return bool(self.options & 1)

    @property
    def restart_identity(self) -> bool:
        """TRUNCATE ... RESTART IDENTITY."""
        return bool(self.options & 2)


@attrs.frozen(slots=True)
class Message:
    """A logical decoding message (``pg_logical_emit_message``; needs ``messages`` on).

    Non-transactional messages arrive immediately, outside Begin/Commit, and
    are delivered even if the emitting transaction rolls back.
    """

    xid: int | None
    flags: int
    lsn: LSN
    prefix: str
    content: bytes

    @property
    def transactional(self) -> bool:
        """Whether the message is part of its transaction (flag bit 1)."""
        return bool(self.flags & 1)


@attrs.frozen(slots=True)
class StreamStart:
    """Start of a block of changes of an in-progress transaction (protocol >= 2)."""

    xid: int
    first_segment: bool


@attrs.frozen(slots=True)
class StreamStop:
    """End of a block of streamed changes; other transactions may follow."""


@attrs.frozen(slots=True)
class StreamCommit:
    """A streamed transaction committed: its streamed changes become final."""

    xid: int
    flags: int
    commit_lsn: LSN
    end_lsn: LSN
    commit_time: datetime


@attrs.frozen(slots=True)
class StreamAbort:
    """A streamed (sub)transaction aborted: drop its changes (``subxid == xid`` for all).

    With protocol 4 and ``streaming = parallel`` (PostgreSQL 16+) the server
    also says where and when the abort happened (a parallel apply worker needs
    it to advance its origin); otherwise both are ``None``.
    """

    xid: int
    subxid: int
    abort_lsn: LSN | None = None
    """The LSN of the abort record (protocol 4, ``streaming = parallel``), else None."""
    abort_time: datetime | None = None
    """When the (sub)transaction aborted (protocol 4, ``streaming = parallel``), else None."""


@attrs.frozen(slots=True)
class BeginPrepare:
    """Start of a transaction prepared for two-phase commit (protocol 3, ``two_phase``)."""

    prepare_lsn: LSN
    end_lsn: LSN
    prepare_time: datetime
    xid: int
    gid: str


@attrs.frozen(slots=True)
class Prepare:
    """``PREPARE TRANSACTION gid`` done: the changes since BeginPrepare are prepared."""

    flags: int
    prepare_lsn: LSN
    end_lsn: LSN
    prepare_time: datetime
    xid: int
    gid: str


@attrs.frozen(slots=True)
class CommitPrepared:
    """``COMMIT PREPARED gid``: the prepared transaction is now committed."""

    flags: int
    commit_lsn: LSN
    end_lsn: LSN
    commit_time: datetime
    xid: int
    gid: str


@attrs.frozen(slots=True)
class RollbackPrepared:
    """``ROLLBACK PREPARED gid``: the prepared transaction is discarded."""

    flags: int
    prepare_end_lsn: LSN
    rollback_end_lsn: LSN
    prepare_time: datetime
    rollback_time: datetime
    xid: int
    gid: str


@attrs.frozen(slots=True)
class StreamPrepare:
    """A streamed transaction was prepared (streaming + two-phase)."""

    flags: int
    prepare_lsn: LSN
    end_lsn: LSN
    prepare_time: datetime
    xid: int
    gid: str


PgOutputMessage: TypeAlias = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | Message
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
    | BeginPrepare
    | Prepare
    | CommitPrepared
    | RollbackPrepared
    | StreamPrepare
)

# --------------------------------------------------------------------------- decoding

# attrs' frozen __init__ sets each field through object.__setattr__, which costs
# ~0.1 us per field: noticeable on the hot path (one Insert and one TupleData per
# row).  These builders fill the slots through their member descriptors instead:
# the same object (attrs' eq/hash/repr are unaffected), built in half the time.
_new = object.__new__


def _setters(cls: type, *fields: str) -> tuple[Callable[[object, object], None], ...]:
    """The member descriptors' ``__set__`` of ``fields`` of the slotted ``cls``."""
    return tuple(cls.__dict__[name].__set__ for name in fields)


_set_kinds, _set_values = _setters(TupleData, "kinds", "values")
_set_insert_xid, _set_insert_oid, _set_insert_new = _setters(Insert, "xid", "relation_oid", "new")
_set_begin_lsn, _set_begin_time, _set_begin_xid = _setters(Begin, "final_lsn", "commit_time", "xid")
_set_commit_flags, _set_commit_lsn, _set_commit_end, _set_commit_time = _setters(
    Commit, "flags", "commit_lsn", "end_lsn", "commit_time"
)


def _make_tuple(kinds: bytes, values: tuple[ColumnValue, ...]) -> TupleData:
    data: TupleData = _new(TupleData)
    _set_kinds(data, kinds)
    _set_values(data, values)
    return data


def _make_insert(xid: int | None, relation_oid: int, new: TupleData) -> Insert:
    message: Insert = _new(Insert)
    _set_insert_xid(message, xid)
    _set_insert_oid(message, relation_oid)
    _set_insert_new(message, new)
    return message


_U32 = struct.Struct(">I")
_unpack_u32 = _U32.unpack_from
_unpack_i32 = struct.Struct(">i").unpack_from
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">BQQq")
_XID_OID = struct.Struct(">II")
_COLUMN_TAIL = struct.Struct(">Ii")
_MESSAGE_HEAD = struct.Struct(">BQ")
_STREAM_START = struct.Struct(">IB")
_STREAM_COMMIT = struct.Struct(">IBQQq")
_STREAM_ABORT = struct.Struct(">II")
_STREAM_ABORT_LONG = struct.Struct(">IIQq")  # + abort LSN and time (protocol 4, parallel)
_BEGIN_PREPARE = struct.Struct(">QQqI")
_PREPARE = struct.Struct(">BQQqI")
_ROLLBACK_PREPARED = struct.Struct(">BQQqqI")
_TRUNCATE_HEAD = struct.Struct(">IB")

_Decoder: TypeAlias = Callable[[bytes, bool], PgOutputMessage]


def _need(data: bytes, pos: int, size: int, what: str) -> None:
    if pos + size > len(data):
        raise DecodeError(f"truncated {what}: need {size} bytes, {len(data) - pos} left", pos)


def _done(data: bytes, pos: int, what: str) -> None:
    if pos != len(data):
        raise DecodeError(f"{len(data) - pos} unexpected bytes after {what}", pos)


def _time(value: int, pos: int) -> datetime:
    # timestamps.pg_timestamp_to_datetime, inlined: no Python frame in compiled code.
    try:
        return PG_EPOCH + timedelta(0, 0, value)
    except OverflowError as exc:
        raise DecodeError(f"timestamp {value} out of range", pos) from exc


def _string(data: bytes, pos: int) -> tuple[str, int]:
    end = data.find(b"\0", pos)
    if end < 0:
        raise DecodeError("unterminated string", pos)
    try:
        return data[pos:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid UTF-8 in string: {exc.reason}", pos + exc.start) from exc


def _xid(data: bytes, pos: int, in_stream: bool) -> tuple[int | None, int]:
    if not in_stream:
        return None, pos
    _need(data, pos, 4, "transaction id")
    return _unpack_u32(data, pos)[0], pos + 4


def _tuple(data: bytes, pos: int) -> tuple[TupleData, int]:
    """Read TupleData at ``pos``; return it and the offset after it.

    The hot path of the decoder (once per column of every row), written for
    mypyc, which compiles this module when otpy is installed (see "Performance"
    in ``docs/pgoutput.md``): byte indexing, shifts and comparisons become C
    operations there, where a ``struct`` call would stay a Python call.  The
    explicit bounds checks make every malformed input a DecodeError with the
    offset of the problem.
    """
    n = len(data)
    if pos + 2 > n:
        raise DecodeError("truncated tuple: missing column count", pos)
    ncols = (data[pos] << 8) | data[pos + 1]
    pos += 2
    # A list of small ints then bytes(): compiled, a list append is a C call
    # where a bytearray item assignment is a generic (boxed) one.
    kinds: list[int] = []
    values: list[ColumnValue] = []
    for i in range(ncols):
        if pos >= n:
            raise DecodeError(f"truncated tuple: {ncols - i} of {ncols} columns missing", pos)
        kind = data[pos]
        kinds.append(kind)
        if kind == 116 or kind == 98:  # 't', 'b'
            if pos + 5 > n:
                raise DecodeError("truncated column length", pos + 1)
            start = pos + 5
            size = data[pos + 1] << 24 | data[pos + 2] << 16 | data[pos + 3] << 8 | data[pos + 4]
            pos = start + size
            if pos > n:
                raise DecodeError(f"column length {size} exceeds the message", start - 4)
            values.append(data[start:pos])
        elif kind == 110:  # 'n'
            values.append(None)
            pos += 1
        elif kind == 117:  # 'u'
            values.append(UNCHANGED_TOAST)
            pos += 1
        else:
            raise DecodeError(f"unknown column kind {kind:#04x}", pos)
    return _make_tuple(bytes(kinds), tuple(values)), pos


def _begin(data: bytes, in_stream: bool) -> Begin:
    # Begin and Commit come once per transaction: with one-row transactions
    # they cost as much as the row, hence the slot-filled builds.
    _need(data, 1, _BEGIN.size, "Begin")
    _done(data, 1 + _BEGIN.size, "Begin")
    lsn, ts, xid = _BEGIN.unpack_from(data, 1)
    message: Begin = _new(Begin)
    _set_begin_lsn(message, lsn_from_u64(LSN, lsn))
    _set_begin_time(message, _time(ts, 9))
    _set_begin_xid(message, xid)
    return message


def _commit(data: bytes, in_stream: bool) -> Commit:
    _need(data, 1, _COMMIT.size, "Commit")
    _done(data, 1 + _COMMIT.size, "Commit")
    flags, lsn, end, ts = _COMMIT.unpack_from(data, 1)
    message: Commit = _new(Commit)
    _set_commit_flags(message, flags)
    _set_commit_lsn(message, lsn_from_u64(LSN, lsn))
    _set_commit_end(message, lsn_from_u64(LSN, end))
    _set_commit_time(message, _time(ts, 18))
    return message


def _origin(data: bytes, in_stream: bool) -> Origin:
    _need(data, 1, 8, "Origin")
    lsn = struct.unpack_from(">Q", data, 1)[0]
    name, pos = _string(data, 9)
    _done(data, pos, "Origin")
    return Origin(LSN(lsn), name)


def _relation(data: bytes, in_stream: bool) -> Relation:
    xid, pos = _xid(data, 1, in_stream)
    _need(data, pos, 4, "Relation")
    oid = _unpack_u32(data, pos)[0]
    namespace, pos = _string(data, pos + 4)
    name, pos = _string(data, pos)
    _need(data, pos, 3, "Relation")
    identity = chr(data[pos])
    ncols = (data[pos + 1] << 8) | data[pos + 2]
    pos += 3
    columns = []
    for _ in range(ncols):
        _need(data, pos, 1, "Relation column")
        flags = data[pos]
        colname, pos = _string(data, pos + 1)
        _need(data, pos, 8, "Relation column")
        type_oid, typmod = _COLUMN_TAIL.unpack_from(data, pos)
        pos += 8
        columns.append(Column(flags, colname, type_oid, typmod))
    _done(data, pos, "Relation")
    return Relation(xid, oid, namespace, name, identity, tuple(columns))


def _type(data: bytes, in_stream: bool) -> Type:
    xid, pos = _xid(data, 1, in_stream)
    _need(data, pos, 4, "Type")
    oid = _unpack_u32(data, pos)[0]
    namespace, pos = _string(data, pos + 4)
    name, pos = _string(data, pos)
    _done(data, pos, "Type")
    return Type(xid, oid, namespace, name)


def _insert(data: bytes, in_stream: bool) -> Insert:
    if in_stream:
        _need(data, 1, 9, "Insert")
        xid, oid = _XID_OID.unpack_from(data, 1)
        pos = 9
    else:
        if len(data) < 6:
            raise DecodeError("truncated Insert", len(data))
        xid = None
        oid = data[1] << 24 | data[2] << 16 | data[3] << 8 | data[4]
        pos = 5
    if data[pos] != 78:  # 'N'
        raise DecodeError(f"Insert: expected 'N', got {data[pos]:#04x}", pos)
    new, pos = _tuple(data, pos + 1)
    if pos != len(data):
        _done(data, pos, "Insert")
    return _make_insert(xid, oid, new)


def _old_tuple(data: bytes, pos: int, what: str) -> tuple[TupleData | None, TupleData | None, int]:
    _need(data, pos, 1, what)
    marker = data[pos]
    if marker == 75:  # 'K'
        key, pos = _tuple(data, pos + 1)
        return key, None, pos
    if marker == 79:  # 'O'
        old, pos = _tuple(data, pos + 1)
        return None, old, pos
    return None, None, pos


def _update(data: bytes, in_stream: bool) -> Update:
    xid, pos = _xid(data, 1, in_stream)
    _need(data, pos, 5, "Update")
    oid = _unpack_u32(data, pos)[0]
    key, old, pos = _old_tuple(data, pos + 4, "Update")
    _need(data, pos, 1, "Update")
    if data[pos] != 78:
        raise DecodeError(f"Update: expected 'K', 'O' or 'N', got {data[pos]:#04x}", pos)
    new, pos = _tuple(data, pos + 1)
    _done(data, pos, "Update")
    return Update(xid, oid, key, old, new)


def _delete(data: bytes, in_stream: bool) -> Delete:
    xid, pos = _xid(data, 1, in_stream)
    _need(data, pos, 5, "Delete")
    oid = _unpack_u32(data, pos)[0]
    key, old, pos = _old_tuple(data, pos + 4, "Delete")
    if key is None and old is None:
        raise DecodeError(f"Delete: expected 'K' or 'O', got {data[pos]:#04x}", pos)
    _done(data, pos, "Delete")
    return Delete(xid, oid, key, old)


def _truncate(data: bytes, in_stream: bool) -> Truncate:
    xid, pos = _xid(data, 1, in_stream)
    _need(data, pos, _TRUNCATE_HEAD.size, "Truncate")
    count, options = _TRUNCATE_HEAD.unpack_from(data, pos)
    pos += _TRUNCATE_HEAD.size
    if len(data) - pos != 4 * count:
        raise DecodeError(
            f"Truncate: {count} relation OIDs announced, {len(data) - pos} bytes left", pos
        )
    oids = struct.unpack_from(f">{count}I", data, pos)
    return Truncate(xid, options, oids)


def _message(data: bytes, in_stream: bool) -> Message:
    xid, pos = _xid(data, 1, in_stream)
    _need(data, pos, _MESSAGE_HEAD.size, "Message")
    flags, lsn = _MESSAGE_HEAD.unpack_from(data, pos)
    prefix, pos = _string(data, pos + _MESSAGE_HEAD.size)
    _need(data, pos, 4, "Message")
    size = _unpack_i32(data, pos)[0]
    pos += 4
    if size < 0 or pos + size != len(data):
        raise DecodeError(f"Message: content length {size}, {len(data) - pos} bytes left", pos - 4)
    return Message(xid, flags, LSN(lsn), prefix, data[pos:])


def _stream_start(data: bytes, in_stream: bool) -> StreamStart:
    _need(data, 1, _STREAM_START.size, "Stream Start")
    _done(data, 1 + _STREAM_START.size, "Stream Start")
    xid, first = _STREAM_START.unpack_from(data, 1)
    return StreamStart(xid, first == 1)


def _stream_stop(data: bytes, in_stream: bool) -> StreamStop:
    _done(data, 1, "Stream Stop")
    return StreamStop()


def _stream_commit(data: bytes, in_stream: bool) -> StreamCommit:
    _need(data, 1, _STREAM_COMMIT.size, "Stream Commit")
    _done(data, 1 + _STREAM_COMMIT.size, "Stream Commit")
    xid, flags, lsn, end, ts = _STREAM_COMMIT.unpack_from(data, 1)
    return StreamCommit(xid, flags, LSN(lsn), LSN(end), _time(ts, 22))


def _stream_abort(data: bytes, in_stream: bool) -> StreamAbort:
    _need(data, 1, _STREAM_ABORT.size, "Stream Abort")
    if len(data) == 1 + _STREAM_ABORT.size:
        xid, subxid = _STREAM_ABORT.unpack_from(data, 1)
        return StreamAbort(xid, subxid)
    # Longer: protocol 4 with streaming = parallel adds the abort's LSN and time.
    _need(data, 1, _STREAM_ABORT_LONG.size, "Stream Abort with abort LSN and time")
    _done(data, 1 + _STREAM_ABORT_LONG.size, "Stream Abort with abort LSN and time")
    xid, subxid, lsn, ts = _STREAM_ABORT_LONG.unpack_from(data, 1)
    return StreamAbort(xid, subxid, LSN(lsn), _time(ts, 17))


def _begin_prepare(data: bytes, in_stream: bool) -> BeginPrepare:
    _need(data, 1, _BEGIN_PREPARE.size, "Begin Prepare")
    lsn, end, ts, xid = _BEGIN_PREPARE.unpack_from(data, 1)
    gid, pos = _string(data, 1 + _BEGIN_PREPARE.size)
    _done(data, pos, "Begin Prepare")
    return BeginPrepare(LSN(lsn), LSN(end), _time(ts, 17), xid, gid)


def _prepare_like(
    cls: type[Prepare | CommitPrepared | StreamPrepare], what: str
) -> Callable[[bytes, bool], Prepare | CommitPrepared | StreamPrepare]:
    def decode(data: bytes, in_stream: bool) -> Prepare | CommitPrepared | StreamPrepare:
        _need(data, 1, _PREPARE.size, what)
        flags, lsn, end, ts, xid = _PREPARE.unpack_from(data, 1)
        gid, pos = _string(data, 1 + _PREPARE.size)
        _done(data, pos, what)
        return cls(flags, LSN(lsn), LSN(end), _time(ts, 18), xid, gid)

    return decode


def _rollback_prepared(data: bytes, in_stream: bool) -> RollbackPrepared:
    _need(data, 1, _ROLLBACK_PREPARED.size, "Rollback Prepared")
    flags, end1, end2, ts1, ts2, xid = _ROLLBACK_PREPARED.unpack_from(data, 1)
    gid, pos = _string(data, 1 + _ROLLBACK_PREPARED.size)
    _done(data, pos, "Rollback Prepared")
    return RollbackPrepared(flags, LSN(end1), LSN(end2), _time(ts1, 18), _time(ts2, 26), xid, gid)


_DECODERS: dict[int, _Decoder] = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
    ord("S"): _stream_start,
    ord("E"): _stream_stop,
    ord("c"): _stream_commit,
    ord("A"): _stream_abort,
    ord("b"): _begin_prepare,
    ord("P"): _prepare_like(Prepare, "Prepare"),
    ord("K"): _prepare_like(CommitPrepared, "Commit Prepared"),
    ord("r"): _rollback_prepared,
    ord("p"): _prepare_like(StreamPrepare, "Stream Prepare"),
}


def decode_message(
    data: bytes | bytearray | memoryview, *, in_stream: bool = False
) -> PgOutputMessage:
    """Decode one pgoutput message.

    Args:
        data: the XLogData payload (or a ``data`` column of
            ``pg_logical_slot_get_binary_changes``).
        in_stream: true between Stream Start and Stream Stop (protocol >= 2):
            data messages then start with a transaction id.  Prefer
            :class:`PgOutputDecoder`, which tracks this.

    Raises:
        DecodeError: for an unknown message type, truncated or malformed input,
            or trailing bytes.  No other exception escapes.
    """
    if type(data) is not bytes:
        data = bytes(data)
    if not data:
        raise DecodeError("empty pgoutput message", 0)
    decoder = _DECODERS.get(data[0])
    if decoder is None:
        raise DecodeError(f"unknown pgoutput message type {data[0]:#04x}", 0)
    return decoder(data, in_stream)


class PgOutputDecoder:
    """Stateful pgoutput decoder for one replication session.

    It knows whether the stream is inside a Stream Start ... Stream Stop block
    and decodes data messages accordingly (with their xid), and it refuses
    impossible sequences (nested Stream Start, Stop without Start) that would
    otherwise silently mis-decode every following message.

    The relation cache is *not* here: that is :class:`~.values.ValueDecoder`'s
    job, keyed by the Relation messages this returns.
    """

    __slots__ = ("in_stream", "stream_xid")

    def __init__(self) -> None:
        #: True between Stream Start and Stream Stop.
        self.in_stream = False
        #: The xid of the current stream block, or None.
        self.stream_xid: int | None = None

    def decode(self, data: bytes | bytearray | memoryview) -> PgOutputMessage:
        """Decode one message, tracking stream blocks.

        Raises:
            DecodeError: malformed input, or Stream Start/Stop out of order.
        """
        if type(data) is not bytes:
            data = bytes(data)
        decoder = _DECODERS.get(data[0]) if data else None
        if decoder is None:
            return decode_message(data)  # raises the right DecodeError
        message = decoder(data, self.in_stream)
        if type(message) is StreamStart:
            if self.in_stream:
                raise DecodeError("Stream Start inside a stream block", 0)
            self.in_stream = True
            self.stream_xid = message.xid
        elif type(message) is StreamStop:
            if not self.in_stream:
                raise DecodeError("Stream Stop outside a stream block", 0)
            self.in_stream = False
            self.stream_xid = None
        return message

    def reset(self) -> None:
        """Forget stream state (after a reconnect: the server restarts at a transaction)."""
        self.in_stream = False
        self.stream_xid = None


def is_compiled() -> bool:
    """Whether this decoder runs as C compiled by mypyc, rather than interpreted.

    Installing otpy compiles this module with mypyc when a C compiler is
    available (see ``setup.py``): the same source, decoding messages 2.5-4x
    faster.  Without one the interpreted module is used, with identical
    results for well-typed calls (compiled code also checks argument types
    at run time: ``in_stream=1`` is a TypeError there).  Benchmarks and
    deployments can check which one they got.
    """
    # A compiled function is a builtin, not a Python function object.
    return not isinstance(is_compiled, types.FunctionType)


# --------------------------------------------------------------------------- encoding


def _enc_string(text: str) -> bytes:
    raw = text.encode()
    if b"\0" in raw:
        raise ValueError(f"string {text!r} contains NUL, which the protocol cannot carry")
    return raw + b"\0"


def _enc_xid(xid: int | None) -> bytes:
    return b"" if xid is None else _U32.pack(xid)


def _enc_tuple(data: TupleData) -> bytes:
    if len(data.kinds) != len(data.values):
        raise ValueError("TupleData kinds and values differ in length")
    parts = [struct.pack(">H", len(data.values))]
    for kind, value in zip(data.kinds, data.values, strict=True):
        if kind in (KIND_TEXT, KIND_BINARY):
            if not isinstance(value, bytes):
                raise ValueError(f"column of kind {chr(kind)!r} needs bytes, got {value!r}")
            parts.append(bytes([kind]) + _unpack_i32_pack(len(value)) + value)
        elif (kind == KIND_NULL and value is None) or (
            kind == KIND_UNCHANGED and value is UNCHANGED_TOAST
        ):
            parts.append(bytes([kind]))
        else:
            raise ValueError(f"column kind {chr(kind)!r} does not match value {value!r}")
    return b"".join(parts)


_unpack_i32_pack = struct.Struct(">i").pack


def _ts(moment: datetime) -> int:
    return datetime_to_pg_timestamp(moment)


def encode_message(message: PgOutputMessage) -> bytes:
    """Encode a message as pgoutput bytes (the inverse of :func:`decode_message`).

    The server never needs this; it lets tests fabricate exact streams (a
    reader's tests, fuzzing).  A data message is encoded with its xid when its
    ``xid`` is not None, i.e. as if inside a stream block.

    Raises:
        ValueError: for values the protocol cannot carry (NUL in strings,
            inconsistent TupleData).
    """
    m = message
    if isinstance(m, Begin):
        return b"B" + _BEGIN.pack(m.final_lsn, _ts(m.commit_time), m.xid)
    if isinstance(m, Commit):
        return b"C" + _COMMIT.pack(m.flags, m.commit_lsn, m.end_lsn, _ts(m.commit_time))
    if isinstance(m, Origin):
        return b"O" + struct.pack(">Q", m.commit_lsn) + _enc_string(m.name)
    if isinstance(m, Relation):
        parts = [
            b"R",
            _enc_xid(m.xid),
            _U32.pack(m.oid),
            _enc_string(m.namespace),
            _enc_string(m.name),
            m.replica_identity.encode("latin-1"),
            struct.pack(">H", len(m.columns)),
        ]
        for col in m.columns:
            parts.append(
                bytes([col.flags])
                + _enc_string(col.name)
                + _COLUMN_TAIL.pack(col.type_oid, col.type_modifier)
            )
        return b"".join(parts)
    if isinstance(m, Type):
        return (
            b"Y"
            + _enc_xid(m.xid)
            + _U32.pack(m.oid)
            + _enc_string(m.namespace)
            + _enc_string(m.name)
        )
    if isinstance(m, Insert):
        return b"I" + _enc_xid(m.xid) + _U32.pack(m.relation_oid) + b"N" + _enc_tuple(m.new)
    if isinstance(m, Update | Delete):
        body = b"U" if isinstance(m, Update) else b"D"
        body += _enc_xid(m.xid) + _U32.pack(m.relation_oid)
        if m.key is not None:
            body += b"K" + _enc_tuple(m.key)
        if m.old is not None:
            body += b"O" + _enc_tuple(m.old)
        if isinstance(m, Update):
            body += b"N" + _enc_tuple(m.new)
        return body
    if isinstance(m, Truncate):
        n = len(m.relation_oids)
        return (
            b"T"
            + _enc_xid(m.xid)
            + _TRUNCATE_HEAD.pack(n, m.options)
            + struct.pack(f">{n}I", *m.relation_oids)
        )
    if isinstance(m, Message):
        return (
            b"M"
            + _enc_xid(m.xid)
            + _MESSAGE_HEAD.pack(m.flags, m.lsn)
            + _enc_string(m.prefix)
            + _unpack_i32_pack(len(m.content))
            + m.content
        )
    if isinstance(m, StreamStart):
        return b"S" + _STREAM_START.pack(m.xid, 1 if m.first_segment else 0)
    if isinstance(m, StreamStop):
        return b"E"
    if isinstance(m, StreamCommit):
        return b"c" + _STREAM_COMMIT.pack(
            m.xid, m.flags, m.commit_lsn, m.end_lsn, _ts(m.commit_time)
        )
    if isinstance(m, StreamAbort):
        if m.abort_lsn is None and m.abort_time is None:
            return b"A" + _STREAM_ABORT.pack(m.xid, m.subxid)
        if m.abort_lsn is None or m.abort_time is None:
            raise ValueError(f"{m!r}: abort_lsn and abort_time go together (protocol 4)")
        return b"A" + _STREAM_ABORT_LONG.pack(m.xid, m.subxid, m.abort_lsn, _ts(m.abort_time))
    if isinstance(m, BeginPrepare):
        return (
            b"b"
            + _BEGIN_PREPARE.pack(m.prepare_lsn, m.end_lsn, _ts(m.prepare_time), m.xid)
            + _enc_string(m.gid)
        )
    if isinstance(m, Prepare | StreamPrepare):
        tag = b"P" if isinstance(m, Prepare) else b"p"
        return (
            tag
            + _PREPARE.pack(m.flags, m.prepare_lsn, m.end_lsn, _ts(m.prepare_time), m.xid)
            + _enc_string(m.gid)
        )
    if isinstance(m, CommitPrepared):
        return (
            b"K"
            + _PREPARE.pack(m.flags, m.commit_lsn, m.end_lsn, _ts(m.commit_time), m.xid)
            + _enc_string(m.gid)
        )
    if isinstance(m, RollbackPrepared):
        return (
            b"r"
            + _ROLLBACK_PREPARED.pack(
                m.flags,
                m.prepare_end_lsn,
                m.rollback_end_lsn,
                _ts(m.prepare_time),
                _ts(m.rollback_time),
                m.xid,
            )
            + _enc_string(m.gid)
        )
    raise TypeError(f"not a pgoutput message: {message!r}")
