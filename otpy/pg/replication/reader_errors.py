"""Errors of the WAL reader (:mod:`otpy.pg.wal_reader`) and its helpers.

One class per situation a caller may want to handle differently: a name that
can never work (:class:`InvalidName`), a slot held by another session
(:class:`SlotInUse`, retry later or run a standby), a publication that does not
exist (:class:`PublicationMissing`), a slot of the wrong kind
(:class:`SlotMismatch`), the same slot subscribed twice in this process
(:class:`AlreadySubscribed`).  All derive from :class:`ReplicationError`, itself
a :class:`~otpy.pg.errors.PgConnectorError`, so the connector's failures can
still be caught in one place.
"""

from __future__ import annotations

from typing import Any

from otpy.pg.errors import PgConnectorError

__all__ = [
    "AlreadySubscribed",
    "InvalidName",
    "InvalidOptions",
    "PublicationMissing",
    "ReplicationError",
    "SlotInUse",
    "SlotMismatch",
    "StreamEnded",
]


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
