"""Options of a WAL reader subscription, validated once, as an attrs value.

``subscribe`` accepts either a :class:`ReaderOptions` or the mapping form of
epg_connector (``{"slot_type": "temporary"}``); unknown keys are rejected with
a did-you-mean, so a typo cannot silently fall back to a default (a mistyped
``slot_type`` would otherwise lose data on a reconnect).

Every value is checked where it enters, by type and range, and a bad one
raises :class:`~.errors.InvalidOptions` naming the option and the value: the
string ``"false"`` is not a boolean (Python would find it true), ``NaN`` is
not a timeout (every comparison with it is false, so it would wait forever or
never), and an infinite status interval would let the walsender time out.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from otpy.child_spec import Backoff

from .errors import InvalidOptions

__all__ = [
    "ACK_MODES",
    "DEAD_LETTER_TABLE",
    "FAILURE_POLICIES",
    "PROTO_MIN_SERVER",
    "SLOT_TYPES",
    "FailurePolicy",
    "ReaderOptions",
]

#: ``temporary``: the slot lives as long as the replication session; changes
#: made while the reader is disconnected are *not* replayed.  ``persistent``:
#: created by the first subscribe if missing, reused if it exists; nothing is
#: lost across restarts.
SLOT_TYPES = ("temporary", "persistent")

#: pgoutput protocol version -> the oldest PostgreSQL (``server_version_num``)
#: that speaks it.  The reader checks it when it connects.
PROTO_MIN_SERVER = {1: 100000, 2: 140000, 3: 150000, 4: 160000}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bad(name: str, expected: str, value: Any) -> InvalidOptions:
    return InvalidOptions(f"{name}: expected {expected}, got {value!r}")


def _flag(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A boolean option is a ``bool``: ``"false"`` or ``0`` would mean something else."""
    if not isinstance(value, bool):
        raise _bad(attribute.name, "True or False", value)


def _seconds(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A duration: a finite number of seconds > 0 (NaN and infinity never make sense here)."""
    if not _number(value) or not math.isfinite(value) or value <= 0:
        raise _bad(attribute.name, "a finite number of seconds > 0", value)


def _count(allow_none: bool) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            expected = "an integer >= 1" + (" or None" if allow_none else "")
            raise _bad(attribute.name, expected, value)

    return check


def _slot_type(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or value not in SLOT_TYPES:
        raise _bad(attribute.name, f"one of {', '.join(map(repr, SLOT_TYPES))}", value)


def _proto_version(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value not in PROTO_MIN_SERVER:
        versions = ", ".join(map(str, PROTO_MIN_SERVER))
        raise _bad(attribute.name, f"an integer among {versions}", value)


def _backoff(value: Any) -> Backoff:
    if isinstance(value, Mapping):
        try:
            value = Backoff(**value)
        except (TypeError, ValueError) as exc:
            raise InvalidOptions(f"restart_backoff: {exc}") from None
    if not isinstance(value, Backoff):
        raise _bad("restart_backoff", "a Backoff or a mapping of its fields", value)
    # A Backoff checked its own fields when built (finite, ordered, jitter in
    # [0, 1]); a reader adds one rule: restarts must not spin without a pause.
    if value.maximum <= 0:
        raise _bad("restart_backoff.maximum", "a number > 0", value.maximum)
    return value


def _create_publication(value: Any) -> bool | tuple[str, ...]:
    if isinstance(value, bool):
        return value
    if (
        isinstance(value, str | bytes)
        or not isinstance(value, Sequence)
        or not value
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise _bad(
            "create_publication",
            "True (FOR ALL TABLES), False, or a non-empty list of table names",
            value,
        )
    return tuple(value)


# --------------------------------------------------------------------------- failures and acks
# What a reader does when the handler keeps failing on one transaction
# (``on_failure``) and who acknowledges (``ack``).  Self-contained: the
# policy value, its checks, and the two ReaderOptions fields that use them.

#: ``retry``: restart with backoff and deliver the transaction again, forever
#: (the default).  ``stop``: after ``max_attempts`` failed deliveries of the
#: same transaction, end the subscription for good with
#: :class:`~.errors.HandlerFailed`.  ``park``: after ``max_attempts``, write
#: the transaction to a dead-letter table through ``pool``, acknowledge it and
#: go on (see :mod:`otpy.pg.dead_letters`).
FAILURE_POLICIES = ("retry", "stop", "park")
#: ``auto``: a transaction is acknowledged when the handler returns from it.
#: ``manual``: returning means "received"; the handler acknowledges later with
#: ``ref.ack(commit_lsn)``.
ACK_MODES = ("auto", "manual")
#: The dead-letter table used when ``on_failure`` names none.
DEAD_LETTER_TABLE = "otpy_dead_letters"

_TABLE_NAME = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}")


def _failure_field(name: str) -> str:
    return f"on_failure.{name}"


@attrs.frozen
class FailurePolicy:
    """The ``on_failure`` reader option: what to do with a transaction the handler keeps failing.

    Attempts are counted per transaction (by commit LSN) across restarts of
    the reader, and start again at 1 when another transaction fails or this
    one is acknowledged.

    Attributes:
        policy: one of :data:`FAILURE_POLICIES`.
        max_attempts: failed deliveries of one transaction before ``stop`` or
            ``park`` applies (1 = at the first failure); ignored by ``retry``.
        pool: name of the otpy pool that writes dead letters (``park`` only,
            required there).
        table: the dead-letter table (``name`` or ``schema.name``), created
            if missing.
    """

    policy: str = "retry"
    max_attempts: int = 5
    pool: str | None = None
    table: str = DEAD_LETTER_TABLE

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.policy, str) or self.policy not in FAILURE_POLICIES:
            expected = f"one of {', '.join(map(repr, FAILURE_POLICIES))}"
            raise _bad(_failure_field("policy"), expected, self.policy)
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise _bad(_failure_field("max_attempts"), "an integer >= 1", attempts)
        if self.pool is not None and (not isinstance(self.pool, str) or not self.pool):
            raise _bad(_failure_field("pool"), "the name of an otpy pool", self.pool)
        if self.policy == "park" and self.pool is None:
            raise InvalidOptions(
                "on_failure.pool: the 'park' policy writes dead letters through an otpy "
                "pool: name it, e.g. on_failure={'policy': 'park', 'pool': 'main'}"
            )
        if not isinstance(self.table, str) or not _TABLE_NAME.fullmatch(self.table):
            raise _bad(
                _failure_field("table"), "a table name, optionally schema-qualified", self.table
            )

    @property
    def gives_up(self) -> bool:
        """Whether failures are counted (``stop`` or ``park``)."""
        return self.policy != "retry"


def _failure_policy(value: Any) -> FailurePolicy:
    if value is None:
        return FailurePolicy()
    if isinstance(value, FailurePolicy):
        return value
    if isinstance(value, str):
        return FailurePolicy(policy=value)
    if isinstance(value, Mapping):
        names = [f.name for f in attrs.fields(FailurePolicy)]
        unknown = [k for k in value if k not in names]
        if unknown:
            raise InvalidOptions(
                f"on_failure: unknown key {unknown[0]!r}; known: {', '.join(names)}"
            )
        return FailurePolicy(**value)
    raise _bad("on_failure", "a policy name, a mapping or a FailurePolicy", value)


def _ack_mode(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or value not in ACK_MODES:
        raise _bad(attribute.name, f"one of {', '.join(map(repr, ACK_MODES))}", value)


@attrs.frozen
class ReaderOptions:
    """How a reader streams, delivers and recovers.

    Attributes:
        slot_type: ``"temporary"`` (default) or ``"persistent"``; see
            :data:`SLOT_TYPES`.  Use persistent when no change may be lost.
        create_publication: create missing publications: ``True`` for
            ``FOR ALL TABLES``, or a list of tables (``"t"``/``"schema.t"``).
        proto_version: pgoutput protocol 1-4 (streaming needs >= 2; raised
            automatically when ``streaming`` is on).  Each needs a server
            recent enough (:data:`PROTO_MIN_SERVER`: 2 needs PostgreSQL 14, 3
            needs 15, 4 needs 16); the reader checks when it connects.
        binary: ask pgoutput for binary values (faster to decode for many types).
        messages: deliver ``pg_logical_emit_message`` messages (op ``"message"``).
        streaming: let the server stream large in-progress transactions
            (less server-side spilling); the reader keeps them until their
            commit and delivers them then, chunked like any transaction.
        status_interval: seconds between standby status updates; keep it well
            below the server's ``wal_sender_timeout``.
        max_batch_size: a transaction with more changes is delivered in chunks
            of this size (``changes.final`` marks the last); ``None`` delivers
            every transaction whole (unbounded memory).
        queue_size: batches buffered between the socket reader and the handler;
            when full the socket is no longer read (backpressure).
        restart_backoff: delay between restarts of a crashed reader
            (exponential, capped), and between standby attempts.
        standby: when the slot is active elsewhere, wait and take over when it
            is freed instead of failing.
        shutdown_timeout: seconds ``unsubscribe`` allows for a clean stop
            (final acknowledgement, slot release) before cancelling.
        connect_timeout: seconds a reader may take to start: connect, check
            the publications, create or find the slot and have
            START_REPLICATION accepted (:class:`~.errors.ReaderStartTimeout`
            beyond).  libpq's own ``connect_timeout`` parameter, when given
            in ``db_opts``, still bounds each connection attempt within it.
        on_failure: what to do when the handler keeps failing on one
            transaction: ``"retry"`` (default, forever), ``"stop"`` or
            ``"park"``, or a mapping of :class:`FailurePolicy` fields
            (``{"policy": "park", "max_attempts": 3, "pool": "main"}``).
        ack: ``"auto"`` (default: returning acknowledges) or ``"manual"``
            (the handler calls ``ref.ack(changes.commit_lsn)`` later).
        max_unacked: with ``ack="manual"``, how many delivered transactions
            may wait for their acknowledgement; at the cap the reader stops
            reading the stream (backpressure) until one is acknowledged.
    """

    slot_type: str = attrs.field(default="temporary", validator=_slot_type)
    create_publication: bool | tuple[str, ...] = attrs.field(
        default=False, converter=_create_publication
    )
    proto_version: int = attrs.field(default=1, validator=_proto_version)
    binary: bool = attrs.field(default=False, validator=_flag)
    messages: bool = attrs.field(default=False, validator=_flag)
    streaming: bool = attrs.field(default=False, validator=_flag)
    status_interval: float = attrs.field(default=10.0, validator=_seconds)
    max_batch_size: int | None = attrs.field(default=5000, validator=_count(allow_none=True))
    queue_size: int = attrs.field(default=4, validator=_count(allow_none=False))
    restart_backoff: Backoff = attrs.field(
        factory=lambda: Backoff(initial=0.5, maximum=30.0, jitter=0.2), converter=_backoff
    )
    standby: bool = attrs.field(default=False, validator=_flag)
    shutdown_timeout: float = attrs.field(default=10.0, validator=_seconds)
    connect_timeout: float = attrs.field(default=30.0, validator=_seconds)
    # failures and acks (see the block above the class)
    on_failure: FailurePolicy = attrs.field(factory=FailurePolicy, converter=_failure_policy)
    ack: str = attrs.field(default="auto", validator=_ack_mode)
    max_unacked: int = attrs.field(default=1000, validator=_count(allow_none=False))

    @property
    def manual_ack(self) -> bool:
        """Whether the handler acknowledges transactions itself (``ack="manual"``)."""
        return self.ack == "manual"

    @property
    def temporary(self) -> bool:
        """Whether the slot is temporary (dropped when the session ends)."""
        return self.slot_type == "temporary"

    @property
    def effective_proto_version(self) -> int:
        """The protocol version sent: at least 2 when streaming is on."""
        return max(self.proto_version, 2) if self.streaming else self.proto_version

    def check_server(self, server_version: int) -> None:
        """Refuse options the server cannot honour (``server_version_num``, e.g. 150004).

        Raises:
            InvalidOptions: the protocol version is newer than the server.
        """
        proto = self.effective_proto_version
        needed = PROTO_MIN_SERVER[proto]
        if server_version < needed:
            usable = [v for v, least in PROTO_MIN_SERVER.items() if least <= server_version]
            raise InvalidOptions(
                f"proto_version: pgoutput protocol {proto} needs PostgreSQL "
                f"{needed // 10000} or later, the server runs {_version(server_version)}; "
                f"use proto_version {max(usable, default=1)} or lower"
            )

    def plugin_options(self) -> list[tuple[str, str]]:
        """pgoutput options other than ``publication_names``, as (name, value) text."""
        options = [("proto_version", str(self.effective_proto_version))]
        if self.binary:
            options.append(("binary", "true"))
        if self.messages:
            options.append(("messages", "true"))
        if self.streaming:
            options.append(("streaming", "on"))
        return options

    @classmethod
    def coerce(cls, value: ReaderOptions | Mapping[str, Any] | None) -> ReaderOptions:
        """Accept a ReaderOptions, a mapping of its fields (Erlang's options map) or None.

        Raises:
            InvalidOptions: an unknown key (with a did-you-mean) or a bad value.
        """
        if value is None:
            return cls()
        if isinstance(value, ReaderOptions):
            return value
        if not isinstance(value, Mapping):
            raise _bad("options", "a mapping or ReaderOptions", value)
        names = [f.name for f in attrs.fields(cls)]
        for key in value:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise InvalidOptions(
                    f"unknown reader option {key!r}{hint}; known: {', '.join(names)}"
                )
        try:
            return cls(**value)
        except TypeError as exc:
            raise InvalidOptions(str(exc)) from None


def _version(server_version: int) -> str:
    return f"{server_version // 10000}.{server_version % 10000}"
