"""Logical replication for otpy: pure decoders (framing, pgoutput, values).

The modules here do no I/O (no connection, no socket), so they can be fuzzed,
benchmarked and reused:

* :mod:`.lsn` -- :class:`LSN`, WAL positions as ``X/Y``.
* :mod:`.timestamps` -- protocol timestamps <-> aware UTC datetimes.
* :mod:`.protocol` -- COPY_BOTH framing: XLogData, keepalives, status updates.
* :mod:`.pgoutput` -- pgoutput messages (protocol 1-4) and their decoder,
  compiled to C by mypyc at install when a compiler is there
  (:func:`is_compiled` tells).
* :mod:`.values` -- tuple data -> ``dict`` of Python values (psycopg loaders),
  and the session's registry of user types
  (:mod:`otpy.pg.wal_reader.typefetch` fills it).
* :mod:`.loaders` -- the extra psycopg loaders :mod:`.values` uses (infinity dates,
  JSON null, types psycopg has no loader for).
* :mod:`.changes` -- transactions assembled into :class:`~.changes.ChangeBatch`.
* :mod:`.options`, :mod:`.handler`, :mod:`.acks`, :mod:`.errors` -- the
  reader's options, its behaviour protocol, the manual-acknowledgement
  bookkeeping and the errors: values and decisions, no I/O.

What talks to the server (the streaming session, slot and publication
queries, type fetching, the slot watch) lives beside the reader, in
:mod:`otpy.pg.wal_reader`.  ``fetch_missing_types`` and
``afetch_missing_types``, once exported here, still resolve here with a
:class:`DeprecationWarning` (``otpy._moved``).
"""

from otpy._moved import moved_names

from .errors import DecodeError, RelationMismatchError, UnknownRelationError, ValueDecodingError
from .loaders import JSON_NULL, JsonNull
from .lsn import LSN
from .pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    Column,
    Commit,
    CommitPrepared,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputDecoder,
    PgOutputMessage,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    TupleData,
    Type,
    UnchangedToast,
    Update,
    decode_message,
    encode_message,
    is_compiled,
)
from .protocol import (
    PrimaryKeepalive,
    StandbyStatusUpdate,
    XLogData,
    decode_copy_data,
    encode_keepalive,
    encode_standby_status,
    encode_xlogdata,
)
from .timestamps import datetime_to_pg_timestamp, now_pg_timestamp, pg_timestamp_to_datetime
from .values import ValueDecoder

__all__ = [
    "JSON_NULL",
    "LSN",
    "UNCHANGED_TOAST",
    "Begin",
    "BeginPrepare",
    "Column",
    "Commit",
    "CommitPrepared",
    "DecodeError",
    "Delete",
    "Insert",
    "JsonNull",
    "Message",
    "Origin",
    "PgOutputDecoder",
    "PgOutputMessage",
    "Prepare",
    "PrimaryKeepalive",
    "Relation",
    "RelationMismatchError",
    "RollbackPrepared",
    "StandbyStatusUpdate",
    "StreamAbort",
    "StreamCommit",
    "StreamPrepare",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "TupleData",
    "Type",
    "UnchangedToast",
    "UnknownRelationError",
    "Update",
    "ValueDecoder",
    "ValueDecodingError",
    "XLogData",
    "datetime_to_pg_timestamp",
    "decode_copy_data",
    "decode_message",
    "encode_keepalive",
    "encode_message",
    "encode_standby_status",
    "encode_xlogdata",
    "is_compiled",
    "now_pg_timestamp",
    "pg_timestamp_to_datetime",
]

__getattr__ = moved_names(
    __name__,
    {
        "afetch_missing_types": "otpy.pg.wal_reader.typefetch:afetch_missing_types",
        "fetch_missing_types": "otpy.pg.wal_reader.typefetch:fetch_missing_types",
    },
)
