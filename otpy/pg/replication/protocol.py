"""Framing of the streaming-replication COPY protocol (``START_REPLICATION``).

Inside COPY_BOTH the server sends CopyData messages whose first byte says what
they are:

* ``w`` XLogData: start LSN, end LSN (the server's current WAL end), send time,
  then the payload (one pgoutput message);
* ``k`` primary keepalive: WAL end, send time, and "reply requested" (answer at
  once or ``wal_sender_timeout`` kills the connection).

The client answers with ``r`` standby status updates (write, flush, apply LSNs,
time, reply-requested flag).  Only *flush* matters to a logical slot: it is the
position the server may forget (``confirmed_flush_lsn``).

Everything here is pure: bytes in, frozen values out, and encoders for the
other direction (also used by tests to fabricate streams).
"""

from __future__ import annotations

import struct
from datetime import datetime
from typing import Final

import attrs

from .errors import DecodeError
from .lsn import LSN
from .timestamps import now_pg_timestamp, pg_timestamp_to_datetime

__all__ = [
    "XLOG_HEADER",
    "PrimaryKeepalive",
    "StandbyStatusUpdate",
    "XLogData",
    "decode_copy_data",
    "encode_keepalive",
    "encode_standby_status",
    "encode_xlogdata",
]

#: The header of an XLogData message after its ``w`` byte: WAL start, WAL end,
#: send time.  The reader's socket loop unpacks it inline (its hot path).
XLOG_HEADER: Final = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">Qq?")
_STATUS = struct.Struct(">cQQQqB")


@attrs.frozen(slots=True)
class XLogData:
    """A ``w`` message: one chunk of the logical stream.

    Attributes:
        start: WAL position of the payload (the LSN of this pgoutput message).
        end: the server's current end of WAL (useful to compute lag).
        send_time: when the server sent the message (aware UTC).
        payload: the pgoutput message bytes, for :mod:`.pgoutput`.
    """

    start: LSN
    end: LSN
    send_time: datetime
    payload: bytes


@attrs.frozen(slots=True)
class PrimaryKeepalive:
    """A ``k`` message: the server is alive and at WAL position ``end``.

    When ``reply_requested`` is true the client must send a status update at
    once.  When nothing is in flight, acknowledging ``end`` keeps an idle slot
    from retaining WAL forever.
    """

    end: LSN
    send_time: datetime
    reply_requested: bool


@attrs.frozen(slots=True)
class StandbyStatusUpdate:
    """An ``r`` message as a value (see :func:`encode_standby_status`).

    Exists so tests and logs can show what was acknowledged; the reader only
    needs the encoded bytes.
    """

    write: LSN
    flush: LSN
    apply: LSN
    time: int
    reply_requested: bool = False

    def encode(self) -> bytes:
        """The ``r`` message bytes (see :func:`encode_standby_status`)."""
        return encode_standby_status(
            self.write, self.flush, self.apply, self.time, self.reply_requested
        )


def decode_copy_data(data: bytes | bytearray | memoryview) -> XLogData | PrimaryKeepalive:
    """Decode one CopyData message received in COPY_BOTH mode.

    Raises:
        DecodeError: on an unknown message type, a truncated header, trailing
            bytes after a keepalive or an impossible send time.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if not data:
        raise DecodeError("empty CopyData message", 0)
    kind = data[0]
    try:
        if kind == 0x77:  # 'w'
            if len(data) < 1 + XLOG_HEADER.size:
                raise DecodeError("truncated XLogData header", len(data))
            start, end, sent = XLOG_HEADER.unpack_from(data, 1)
            return XLogData(
                LSN(start), LSN(end), pg_timestamp_to_datetime(sent), data[1 + XLOG_HEADER.size :]
            )
        if kind == 0x6B:  # 'k'
            if len(data) != 1 + _KEEPALIVE.size:
                raise DecodeError(
                    f"keepalive must be {1 + _KEEPALIVE.size} bytes, got {len(data)}", len(data)
                )
            end, sent, reply = _KEEPALIVE.unpack_from(data, 1)
            return PrimaryKeepalive(LSN(end), pg_timestamp_to_datetime(sent), reply)
    except OverflowError as exc:
        raise DecodeError(f"send time out of range: {exc}", 17 if kind == 0x77 else 9) from exc
    raise DecodeError(f"unknown replication message type {chr(kind)!r}", 0)


def encode_standby_status(
    write: int,
    flush: int,
    apply: int,
    time: int | None = None,
    reply_requested: bool = False,
) -> bytes:
    """Encode an ``r`` standby status update to send with ``put_copy_data``.

    Args:
        write: last WAL position received (written) by the client.
        flush: last position durably processed: the slot may discard WAL up to here.
        apply: last position applied (for logical replication, usually = flush).
        time: client clock as a PostgreSQL timestamp; default now.
        reply_requested: ask the server to answer at once with a keepalive
            (handy to measure round trips or to test liveness).
    """
    if time is None:
        time = now_pg_timestamp()
    return _STATUS.pack(b"r", write, flush, apply, time, 1 if reply_requested else 0)


def encode_xlogdata(start: int, end: int, send_time: int, payload: bytes) -> bytes:
    """Encode a ``w`` message (server side; for tests and stream fabrication)."""
    return b"w" + XLOG_HEADER.pack(start, end, send_time) + payload


def encode_keepalive(end: int, send_time: int, reply_requested: bool) -> bytes:
    """Encode a ``k`` message (server side; for tests and stream fabrication)."""
    return b"k" + _KEEPALIVE.pack(end, send_time, reply_requested)
