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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from otpy.child_spec import Backoff

from .errors import InvalidOptions

__all__ = ["PROTO_MIN_SERVER", "SLOT_TYPES", "SNAPSHOT_MODES", "ReaderOptions"]

#: ``temporary``: the slot lives as long as the replication session; changes
#: made while the reader is disconnected are *not* replayed.  ``persistent``:
#: created by the first subscribe if missing, reused if it exists; nothing is
#: lost across restarts.
SLOT_TYPES = ("temporary", "persistent")

#: pgoutput protocol version -> the oldest PostgreSQL (``server_version_num``)
#: that speaks it.  The reader checks it when it connects.
PROTO_MIN_SERVER = {1: 100000, 2: 140000, 3: 150000, 4: 160000}


#: ``never``: stream changes only; ``initial``: when the reader creates the
#: slot, read every published table under the slot's exported snapshot first
#: (op ``"read"``), then stream from the slot's consistent point;
#: ``initial_only``: read the tables once, then end the subscription (no slot).
#: See :mod:`otpy.pg.snapshot` and ``docs/snapshots.md``.
SNAPSHOT_MODES = ("never", "initial", "initial_only")


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


def _snapshot_mode(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or value not in SNAPSHOT_MODES:
        raise _bad(attribute.name, f"one of {', '.join(map(repr, SNAPSHOT_MODES))}", value)


def _table_names(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (
        isinstance(value, str | bytes)
        or not isinstance(value, Sequence)
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise _bad("snapshot_tables", 'None or a list of table names ("t" or "schema.t")', value)
    return tuple(value)


def _qualified_name(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value or "\0" in value or value.count(".") > 1:
        raise _bad(attribute.name, 'a table name ("t" or "schema.t")', value)


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
        snapshot: ``"never"`` (default), ``"initial"`` or ``"initial_only"``;
            see :data:`SNAPSHOT_MODES` and ``docs/snapshots.md``.
        snapshot_tables: the tables to read (``"t"``/``"schema.t"``, each
            published); ``None`` reads every table of the publications.
        snapshot_chunk_size: rows per snapshot batch handed to the handler.
        snapshot_parallelism: connections reading the snapshot at once
            (each imports the same exported snapshot).
        snapshot_progress_table: where a persistent slot's snapshot state is
            kept (``"t"`` or ``"schema.t"``, created if missing: needs CREATE
            on the schema).
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
    # Initial snapshot (otpy.pg.snapshot).
    snapshot: str = attrs.field(default="never", validator=_snapshot_mode)
    snapshot_tables: tuple[str, ...] | None = attrs.field(default=None, converter=_table_names)
    snapshot_chunk_size: int = attrs.field(default=5000, validator=_count(allow_none=False))
    snapshot_parallelism: int = attrs.field(default=1, validator=_count(allow_none=False))
    snapshot_progress_table: str = attrs.field(
        default="otpy_snapshot_progress", validator=_qualified_name
    )

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
