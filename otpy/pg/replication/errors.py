"""Errors of the replication layer (:mod:`otpy.pg.replication` and the WAL reader).

Three families, one module:

* :class:`DecodeError`: the bytes on the wire make no sense.  Framing
  (:mod:`.protocol`), pgoutput (:mod:`.pgoutput`) and LSN parsing (:mod:`.lsn`)
  all raise this one class, so a reader catches a single type whatever layer
  noticed it.
* :class:`ValueDecodingError`: the message stream is inconsistent for the value
  decoder (a row before its Relation); never raised for a bad *value*, which
  is delivered as text instead.
* :class:`ReplicationError`: what the WAL reader reports to its caller, one
  class per situation a caller may handle differently: a name that can never
  work (:class:`InvalidName`), a slot held by another session
  (:class:`SlotInUse`: retry later or run a standby), a missing publication
  (:class:`PublicationMissing`), a slot of the wrong kind (:class:`SlotMismatch`),
  the same slot subscribed twice in this process (:class:`AlreadySubscribed`).
  It is a :class:`~otpy.pg.errors.PgConnectorError`, so the connector's
  failures can still be caught in one place.
"""

from __future__ import annotations

from typing import Any

from otpy.pg.errors import PgConnectorError

__all__ = [
    "AlreadySubscribed",
    "DecodeError",
    "InvalidName",
    "InvalidOptions",
    "PublicationMissing",
    "RelationMismatchError",
    "ReplicationError",
    "SlotInUse",
    "SlotMismatch",
    "StreamEnded",
    "UnknownRelationError",
    "ValueDecodingError",
]


class DecodeError(ValueError):
    """Malformed or truncated replication bytes (framing or pgoutput).

    The decoders never let ``IndexError``, ``struct.error`` or
    ``UnicodeDecodeError`` escape: every way bytes can be wrong ends up here,
    with the byte ``offset`` where decoding stopped, so that a reader can log a
    precise message (and stop the stream) instead of crashing on an internal
    error that looks like a bug.

    Attributes:
        offset: index in the decoded buffer where the problem was found.
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte offset {offset})")
        self.offset = offset


class ValueDecodingError(Exception):
    """Base class of the errors :class:`ValueDecoder` raises (never for a bad value)."""


class UnknownRelationError(ValueDecodingError, LookupError):
    """A row refers to a relation OID no Relation message has described.

    pgoutput always sends Relation before the first change of a table in a
    session, so this means messages were skipped or the decoder was reset.
    """


class RelationMismatchError(ValueDecodingError):
    """A tuple has a different number of columns than its Relation announced."""


class ReplicationError(PgConnectorError):
    """Base class of the WAL reader's own errors."""


class InvalidName(ReplicationError, ValueError):
    """A slot or publication name that PostgreSQL would refuse (or that is unsafe).

    Raised before anything is sent to the server: slot names must match
    ``[a-z0-9_]{1,63}`` (PostgreSQL's own rule), publication names must be
    non-empty identifiers of at most 63 bytes without NUL.
    """


class InvalidOptions(ReplicationError, ValueError):
    """Reader options with an unknown key or a value out of range."""


class SlotInUse(ReplicationError):
    """The replication slot is streaming to another session (``active_pid`` is set).

    PostgreSQL lets one session at a time read a slot.  Retry later, stop the
    other reader, or subscribe with ``standby=True`` to wait for the slot and
    take over when it is freed.
    """

    def __init__(self, slot: str, active_pid: int | None, detail: str = "") -> None:
        holder = f"PostgreSQL backend PID {active_pid}" if active_pid else "another session"
        super().__init__(
            f"replication slot {slot!r} is active for {holder}; stop that reader, or "
            f"subscribe with standby=True to take over when it is freed"
            + (f" ({detail})" if detail else "")
        )
        self.slot = slot
        self.active_pid = active_pid


class PublicationMissing(ReplicationError):
    """A publication named in ``subscribe`` does not exist in the database.

    pgoutput would only notice at the first change (and then end the stream),
    so the reader checks up front.  Create it (``CREATE PUBLICATION``) or pass
    ``create_publication``.
    """

    def __init__(self, missing: list[str], database: str) -> None:
        names = ", ".join(repr(n) for n in missing)
        super().__init__(
            f"publication(s) {names} do not exist in database {database!r}; create them "
            f"(CREATE PUBLICATION ... FOR TABLE ...) or pass the create_publication option"
        )
        self.missing = missing


class SlotMismatch(ReplicationError):
    """An existing slot of that name cannot be used (other plugin, database or kind)."""


class AlreadySubscribed(ReplicationError):
    """This process already runs a reader for the slot (OTP's ``{already_started, Pid}``).

    ``subscription`` is the existing subscription handle: use it (or
    ``unsubscribe`` it first).
    """

    def __init__(self, slot: str, subscription: Any) -> None:
        super().__init__(f"replication slot {slot!r} is already subscribed: {subscription!r}")
        self.slot = slot
        self.subscription = subscription


class StreamEnded(ReplicationError):
    """The server ended the replication stream without an error (e.g. the slot was dropped)."""
