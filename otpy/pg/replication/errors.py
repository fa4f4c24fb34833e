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
  the same slot subscribed twice in this process (:class:`AlreadySubscribed`),
  a handler that cannot receive changes (:class:`InvalidHandler`), a start that
  took too long (:class:`ReaderStartTimeout`), and the *terminal* ones,
  :class:`ChangesLost` (:class:`SlotLost`, :class:`SlotInvalidated`): the
  changes the slot held are gone, so the reader stops for good instead of
  restarting.
  It is a :class:`~otpy.pg.errors.PgConnectorError`, so the connector's
  failures can still be caught in one place.
"""

from __future__ import annotations

from typing import Any

from otpy.pg.errors import PgConnectorError

__all__ = [
    "AlreadySubscribed",
    "ChangesLost",
    "DecodeError",
    "HandlerFailed",
    "InvalidHandler",
    "InvalidName",
    "InvalidOptions",
    "PublicationMissing",
    "ReaderStartTimeout",
    "RelationMismatchError",
    "ReplicationError",
    "SlotInUse",
    "SlotInvalidated",
    "SlotLost",
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
    """Reader options with an unknown key, a value of the wrong type or out of range.

    The message names the option and the value.  Also raised when the server
    is too old for an option (``proto_version`` 4 and ``streaming="parallel"``
    need PostgreSQL 16, ``two_phase`` 15, ``origin`` 16, ``failover`` 17, a
    ``create_publication`` row filter or column list 15,
    ``publish_generated_columns`` 18), naming both versions: drop the option
    or upgrade the server.
    """


class InvalidHandler(ReplicationError, TypeError):
    """The handler passed to ``subscribe`` cannot receive changes.

    Raised before anything starts when ``handle_replication_data`` is missing
    (e.g. misspelled in a :class:`~.handler.ReplicationHandler` subclass, which
    would otherwise acknowledge every transaction unseen), or when a handler
    method is not a coroutine function (``async def``).  The message names the
    method: implement it, as ``async def``.
    """


class ReaderStartTimeout(ReplicationError, TimeoutError):
    """A reader did not start within its ``connect_timeout`` option.

    ``phase`` says where it was stuck: ``"connecting"`` (host unreachable or
    not answering: check the address and the network), ``"creating the slot"``
    (``CREATE_REPLICATION_SLOT`` waits for the transactions running on the
    server to finish: look for long-running transactions) or ``"starting
    replication"``.  A first ``subscribe`` raises it; a restart that times out
    is retried with the reader's backoff.
    """

    def __init__(self, slot: str, phase: str, timeout: float, database: str) -> None:
        super().__init__(
            f"replication slot {slot!r} on {database}: no start within {timeout:g} s "
            f"(connect_timeout), still {phase}"
            + (
                "; CREATE_REPLICATION_SLOT waits for running transactions to finish: "
                "end long-running transactions or raise connect_timeout"
                if phase == "creating the slot"
                else "; check that the server is reachable and answering"
            )
        )
        self.slot = slot
        self.phase = phase
        self.timeout = timeout


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


class ChangesLost(ReplicationError):
    """Terminal: the changes the slot held are gone, so restarting cannot help.

    The reader does not restart: it calls ``handle_replication_stop`` once
    (with the error on ``ref.error``), logs what happened and what to do,
    and its subscription ends (:meth:`Subscription.wait_stopped` returns the
    error; the slot name may be subscribed again).  Whatever was committed
    since the last acknowledged transaction can no longer be streamed:
    resynchronise the consumer from the source tables.
    """

    def __init__(self, slot: str, message: str) -> None:
        super().__init__(message)
        self.slot = slot


class SlotLost(ChangesLost):
    """The persistent slot this subscription was reading no longer exists.

    Someone dropped it (``pg_drop_replication_slot``, ``otpy slots drop``), or
    the server lost it.  otpy creates a missing slot only on the *first*
    start of a subscription; re-creating it behind a running reader would
    silently skip everything committed while it was gone.  What to do:
    resynchronise the consumer, then ``subscribe`` again (which creates a new
    slot at the current end of WAL).
    """

    def __init__(self, slot: str) -> None:
        super().__init__(
            slot,
            f"replication slot {slot!r} was read by this subscription and no longer exists "
            f"(dropped?): the changes committed since its last acknowledgement are lost. "
            f"Resynchronise the consumer from the source tables, then subscribe again "
            f"(that creates a new slot at the current end of WAL)",
        )


class SlotInvalidated(ChangesLost):
    """PostgreSQL invalidated the slot: the WAL it needed was removed.

    Typically ``max_slot_wal_keep_size`` was exceeded while the reader lagged
    or was down (``wal_status = 'lost'``), or, on PostgreSQL 18,
    ``idle_replication_slot_timeout`` expired.  The slot can never stream
    again.  What to do: drop it (``SELECT pg_drop_replication_slot(...)``),
    resynchronise the consumer from the source tables, subscribe again; and
    size ``max_slot_wal_keep_size`` for the longest outage you must survive.
    ``reason`` is PostgreSQL's (``wal_removed``, ``idle_timeout``...), when known.
    """

    def __init__(self, slot: str, reason: str | None = None, detail: str = "") -> None:
        why = f" ({reason})" if reason else ""
        super().__init__(
            slot,
            f"replication slot {slot!r} was invalidated by PostgreSQL{why}: the WAL it needed "
            f"was removed, so the changes committed since its last acknowledgement are lost"
            + (f" [{detail}]" if detail else "")
            + f". Drop the slot (SELECT pg_drop_replication_slot('{slot}')), resynchronise "
            f"the consumer from the source tables and subscribe again; raise "
            f"max_slot_wal_keep_size to survive longer outages",
        )
        self.reason = reason


class StreamEnded(ReplicationError):
    """The server ended the replication stream without an error (e.g. the slot was dropped)."""


class HandlerFailed(ReplicationError):
    """Terminal: the handler raised on the same transaction ``max_attempts`` times.

    Raised (on ``ref.error``, from :meth:`Subscription.wait_stopped`) under
    the ``on_failure`` policy ``stop``.  Nothing was lost: the slot still
    holds the transaction and everything after it, unacknowledged.  What to
    do: fix the handler (or the data it chokes on) and subscribe again, which
    delivers this transaction first; or subscribe with the ``park`` policy to
    set it aside.  The handler's last exception is ``last_error`` (and the
    ``__cause__``).
    """

    def __init__(
        self,
        slot: str,
        commit_lsn: Any,
        xid: int | None,
        attempts: int,
        last_error: BaseException,
    ) -> None:
        super().__init__(
            f"replication slot {slot!r}: the handler failed {attempts} times on the "
            f"transaction xid {xid} committed at {commit_lsn} "
            f"({type(last_error).__name__}: {last_error}); the reader stopped for good "
            f"(on_failure policy 'stop'), the slot still holds the transaction. Fix the "
            f"handler and subscribe again, or use on_failure 'park' to set it aside"
        )
        self.slot = slot
        self.commit_lsn = commit_lsn
        self.xid = xid
        self.attempts = attempts
        self.last_error = last_error
