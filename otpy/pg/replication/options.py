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
    "GENERATED_COLUMNS",
    "ORIGINS",
    "PROTO_MIN_SERVER",
    "SLOT_TYPES",
    "SNAPSHOT_MODES",
    "STREAMING",
    "FailurePolicy",
    "PublicationSpec",
    "PublishedTable",
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

#: Values of the ``streaming`` option: off, on, or ``"parallel"`` (PostgreSQL 16+).
STREAMING = (False, True, "parallel")

#: Values of the ``origin`` option (PostgreSQL 16+): ``"any"`` sends every
#: change, ``"none"`` only those made without a replication origin.
ORIGINS = ("any", "none")

#: Option -> (the oldest ``server_version_num`` that has it, the least protocol it needs).
_FEATURES = {
    "streaming": (140000, 2),
    "streaming='parallel'": (160000, 4),
    "two_phase": (150000, 3),
    "origin": (160000, 1),
    "failover": (170000, 1),
}


#: ``never``: stream changes only; ``initial``: when the reader creates the
#: slot, read every published table under the slot's exported snapshot first
#: (op ``"read"``), then stream from the slot's consistent point;
#: ``initial_only``: read the tables once, then end the subscription (no slot).
#: See :mod:`otpy.pg.wal_reader.snapshot` and ``docs/snapshots.md``.
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


def _optional_seconds(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A duration or None (disabled / derived)."""
    if value is not None:
        _seconds(_, attribute, value)


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
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value not in PROTO_MIN_SERVER:
        versions = ", ".join(map(str, PROTO_MIN_SERVER))
        raise _bad(
            attribute.name, f"None (the highest the server speaks) or one of {versions}", value
        )


def _streaming(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not any(
        value is choice or (isinstance(value, str) and value == choice) for choice in STREAMING
    ):
        raise _bad(attribute.name, "True, False or 'parallel'", value)


def _origin(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or value not in ORIGINS):
        raise _bad(attribute.name, "None (the server's default, any), 'any' or 'none'", value)


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


#: ``publish_generated_columns`` values (PostgreSQL 18): True means ``"stored"``.
GENERATED_COLUMNS = ("none", "stored")


@attrs.frozen
class PublishedTable:
    """One table of a publication otpy creates, with its column list and row filter.

    Attributes:
        name: ``"table"`` or ``"schema.table"`` (quoted as identifiers).
        columns: publish only these columns (quoted as identifiers); None = all.
        where: a row filter, SQL passed to PostgreSQL **as given** (it is your
            SQL, like a view's: never build it from untrusted input); None = all rows.
    """

    name: str
    columns: tuple[str, ...] | None = None
    where: str | None = None


@attrs.frozen
class PublicationSpec:
    """The mapping form of ``create_publication``: tables and publication parameters.

    Attributes:
        tables: the tables, or None for ``FOR ALL TABLES``.
        publish_via_partition_root: publish a partitioned table's changes as
            the root's (``publish_via_partition_root``, PostgreSQL 13+).
        publish_generated_columns: ``"stored"`` or ``"none"``
            (``publish_generated_columns``, PostgreSQL 18).
    """

    tables: tuple[PublishedTable, ...] | None = None
    publish_via_partition_root: bool | None = None
    publish_generated_columns: str | None = None


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise _bad(name, "a non-empty string without NUL", value)
    return value


def _published_table(name: Any, spec: Any) -> PublishedTable:
    table = _text("create_publication.tables", name)
    where = f"create_publication.tables[{table!r}]"
    if spec is None:
        return PublishedTable(table)
    if not isinstance(spec, Mapping):
        raise _bad(where, "None or a mapping with 'columns' and/or 'where'", spec)
    unknown = set(spec) - {"columns", "where"}
    if unknown:
        raise _bad(where, "only the keys 'columns' and 'where'", sorted(map(str, unknown)))
    columns = spec.get("columns")
    if columns is not None:
        if isinstance(columns, str | bytes) or not isinstance(columns, Sequence) or not columns:
            raise _bad(f"{where}.columns", "a non-empty list of column names", columns)
        columns = tuple(_text(f"{where}.columns", c) for c in columns)
    row_filter = spec.get("where")
    if row_filter is not None:
        row_filter = _text(f"{where}.where", row_filter)
    return PublishedTable(table, columns, row_filter)


def _publication_spec(value: Mapping[Any, Any]) -> PublicationSpec:
    known = {f.name for f in attrs.fields(PublicationSpec)}
    unknown = [str(k) for k in value if k not in known]
    if unknown:
        raise _bad("create_publication", f"only the keys {', '.join(sorted(known))}", unknown)
    tables = value.get("tables")
    if tables is None:
        parsed = None
    elif isinstance(tables, Mapping) and tables:
        parsed = tuple(_published_table(k, v) for k, v in tables.items())
    elif isinstance(tables, Sequence) and not isinstance(tables, str | bytes) and tables:
        parsed = tuple(_published_table(t, None) for t in tables)
    else:
        raise _bad(
            "create_publication.tables",
            "None (all tables), a non-empty list of names or a mapping name -> options",
            tables,
        )
    root = value.get("publish_via_partition_root")
    if root is not None and not isinstance(root, bool):
        raise _bad("create_publication.publish_via_partition_root", "True or False", root)
    generated = value.get("publish_generated_columns")
    if isinstance(generated, bool):
        generated = GENERATED_COLUMNS[generated]
    if generated is not None and generated not in GENERATED_COLUMNS:
        raise _bad(
            "create_publication.publish_generated_columns",
            "True, False, 'stored' or 'none'",
            generated,
        )
    return PublicationSpec(parsed, root, generated)


def _create_publication(value: Any) -> bool | tuple[str, ...] | PublicationSpec:
    if isinstance(value, bool | PublicationSpec):
        return value
    if isinstance(value, Mapping):
        return _publication_spec(value)
    if (
        isinstance(value, str | bytes)
        or not isinstance(value, Sequence)
        or not value
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise _bad(
            "create_publication",
            "True (FOR ALL TABLES), False, a non-empty list of table names, or a mapping "
            "(see PublicationSpec)",
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
#: go on (see :mod:`otpy.pg.wal_reader.dead_letters`).
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
            ``FOR ALL TABLES``, a list of tables (``"t"``/``"schema.t"``), or
            a mapping with ``tables`` (a list, or ``{name: {"columns": [...],
            "where": "sql"}}``; absent: all tables),
            ``publish_via_partition_root`` and ``publish_generated_columns``
            (see :class:`PublicationSpec`).
        proto_version: pgoutput protocol 1-4, or None (default): the highest
            the server speaks (4 on PostgreSQL 16+, 3 on 15, 2 on 14), so
            every newer feature is available.  A pinned version is raised to
            what the options need (``streaming``: 2, ``two_phase``: 3,
            ``streaming="parallel"``: 4).  Each needs a server recent enough
            (:data:`PROTO_MIN_SERVER`); the reader checks when it connects.
        binary: ask pgoutput for binary values (faster to decode for many types).
        messages: deliver ``pg_logical_emit_message`` messages (op ``"message"``).
        streaming: let the server stream large in-progress transactions
            (less server-side spilling); the reader keeps them until their
            commit and delivers them then, chunked like any transaction.
            ``True``, ``False`` or ``"parallel"`` (PostgreSQL 16+, protocol 4:
            the server may interleave several streamed transactions and says
            where each aborted); delivered exactly as with ``True``.
        two_phase: decode prepared transactions at PREPARE TRANSACTION
            (PostgreSQL 15+): their changes arrive then, the final batch
            ending with a ``"prepare"`` change, and a later batch holds one
            ``"commit_prepared"`` or ``"rollback_prepared"`` change (see
            docs/replication.md).  Off, a prepared transaction arrives whole
            at COMMIT PREPARED like any commit.  PostgreSQL keeps the slot
            two-phase once a reader enabled it.
        origin: ``"none"`` sends only changes made without a replication
            origin (skip what another replication applied: loop-free two-way
            sync), ``"any"`` every change; None (default) leaves the server's
            default (any).  PostgreSQL 16+.
        failover: create the persistent slot as a failover slot (PostgreSQL
            17+), or mark an existing one, so that standbys with
            ``sync_replication_slots`` keep a copy a promoted standby can
            stream from (see docs/operations.md).
        status_interval: seconds between standby status updates; keep it well
            below the server's ``wal_sender_timeout``.  ``None`` (the default):
            a third of ``wal_sender_timeout``, at most 10 s, read when the
            reader connects (see :mod:`~otpy.pg.wal_reader.watch`).
        slot_check_interval: seconds between checks of the slot's WAL
            retention (``pg_replication_slots``), for the reader's metrics
            and a warning at 50 % of ``max_slot_wal_keep_size``; ``None``
            disables them.
        max_batch_size: a transaction with more changes is delivered in chunks
            of this size (``changes.final`` marks the last); ``None`` delivers
            every transaction whole (unbounded memory).
        queue_size: batches buffered between the socket reader and the handler;
            when full the socket is no longer read (backpressure).
        restart_backoff: delay between restarts of a crashed reader
            (exponential, capped).
        standby: when the slot is active elsewhere, wait and take over when it
            is freed instead of failing: the standby waits on an advisory lock
            the active reader holds, so it takes over within about a second
            of the slot being freed (see
            :meth:`~otpy.pg.wal_reader.stream.ReplicationSession.take_over`).
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
        heartbeat_interval: seconds between heartbeats (``None``, the default:
            none).  A heartbeat is a non-transactional
            ``pg_logical_emit_message`` with the prefix ``otpy.heartbeat``
            written on the reader's normal connection and read back from the
            stream: it proves the whole path, moves an idle slot forward and
            feeds the reader's metrics.  Heartbeats are never delivered to
            the handler (even with ``messages``).
        heartbeat_timeout: seconds after which a heartbeat not seen back
            marks the reader unhealthy (``/readyz``); default three intervals.


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
    create_publication: bool | tuple[str, ...] | PublicationSpec = attrs.field(
        default=False, converter=_create_publication
    )
    proto_version: int | None = attrs.field(default=None, validator=_proto_version)
    binary: bool = attrs.field(default=False, validator=_flag)
    messages: bool = attrs.field(default=False, validator=_flag)
    streaming: bool | str = attrs.field(default=False, validator=_streaming)
    status_interval: float | None = attrs.field(default=None, validator=_optional_seconds)
    max_batch_size: int | None = attrs.field(default=500, validator=_count(allow_none=True))
    queue_size: int = attrs.field(default=4, validator=_count(allow_none=False))
    restart_backoff: Backoff = attrs.field(
        factory=lambda: Backoff(initial=0.5, maximum=30.0, jitter=0.2), converter=_backoff
    )
    standby: bool = attrs.field(default=False, validator=_flag)
    shutdown_timeout: float = attrs.field(default=10.0, validator=_seconds)
    connect_timeout: float = attrs.field(default=30.0, validator=_seconds)
    two_phase: bool = attrs.field(default=False, validator=_flag)
    origin: str | None = attrs.field(default=None, validator=_origin)
    failover: bool = attrs.field(default=False, validator=_flag)
    # failures and acks (see the block above the class)
    on_failure: FailurePolicy = attrs.field(factory=FailurePolicy, converter=_failure_policy)
    ack: str = attrs.field(default="auto", validator=_ack_mode)
    max_unacked: int = attrs.field(default=1000, validator=_count(allow_none=False))
    heartbeat_interval: float | None = attrs.field(default=None, validator=_optional_seconds)
    heartbeat_timeout: float | None = attrs.field(default=None, validator=_optional_seconds)
    slot_check_interval: float | None = attrs.field(default=30.0, validator=_optional_seconds)
    # Initial snapshot (otpy.pg.wal_reader.snapshot).
    snapshot: str = attrs.field(default="never", validator=_snapshot_mode)
    snapshot_tables: tuple[str, ...] | None = attrs.field(default=None, converter=_table_names)
    snapshot_chunk_size: int = attrs.field(default=5000, validator=_count(allow_none=False))
    snapshot_parallelism: int = attrs.field(default=1, validator=_count(allow_none=False))
    snapshot_progress_table: str = attrs.field(
        default="otpy_snapshot_progress", validator=_qualified_name
    )

    def __attrs_post_init__(self) -> None:
        if self.failover and self.temporary:
            raise InvalidOptions(
                "failover: a temporary slot cannot fail over (it dies with its session); "
                "use slot_type='persistent' with failover=True"
            )
        if self.snapshot != "never" and (self.failover or self.two_phase):
            raise InvalidOptions(
                "snapshot: a slot created for an initial snapshot is not yet created with "
                "failover or two_phase; create the slot with a first subscription without "
                "a snapshot, or leave failover/two_phase off"
            )

    @property
    def manual_ack(self) -> bool:
        """Whether the handler acknowledges transactions itself (``ack="manual"``)."""
        return self.ack == "manual"

    @property
    def effective_heartbeat_timeout(self) -> float | None:
        """The heartbeat bound in force: ``heartbeat_timeout``, else three intervals."""
        if self.heartbeat_interval is None:
            return None
        return self.heartbeat_timeout or 3 * self.heartbeat_interval

    @property
    def temporary(self) -> bool:
        """Whether the slot is temporary (dropped when the session ends)."""
        return self.slot_type == "temporary"

    def _features(self) -> list[str]:
        """The options in use that need a newer server or protocol (keys of ``_FEATURES``)."""
        used = []
        if self.streaming == "parallel":
            used.append("streaming='parallel'")
        elif self.streaming:
            used.append("streaming")
        if self.two_phase:
            used.append("two_phase")
        if self.origin is not None:
            used.append("origin")
        if self.failover:
            used.append("failover")
        return used

    def protocol(self, server_version: int | None = None) -> int:
        """The pgoutput protocol version to ask for.

        Pinned (``proto_version``): that version, raised to what the options
        need.  Not pinned: the highest the server speaks when
        ``server_version`` (``server_version_num``) is known, else the least
        the options need.
        """
        needed = max((_FEATURES[f][1] for f in self._features()), default=1)
        if self.proto_version is not None:
            return max(self.proto_version, needed)
        if server_version is None:
            return needed
        spoken = [v for v, least in PROTO_MIN_SERVER.items() if least <= server_version]
        return max(max(spoken, default=1), needed)

    def check_server(self, server_version: int) -> None:
        """Refuse options the server cannot honour (``server_version_num``, e.g. 150004).

        Raises:
            InvalidOptions: an option (or the pinned protocol version) needs a
                newer server; the message names the option, both versions and
                what to do.
        """
        running = _version(server_version)
        for feature in self._features():
            least = _FEATURES[feature][0]
            if server_version < least:
                raise InvalidOptions(
                    f"{feature} needs PostgreSQL {least // 10000} or later, the server runs "
                    f"{running}; drop the option or upgrade the server"
                )
        proto = self.protocol(server_version)
        needed = PROTO_MIN_SERVER[proto]
        if server_version < needed:
            usable = [v for v, least in PROTO_MIN_SERVER.items() if least <= server_version]
            raise InvalidOptions(
                f"proto_version: pgoutput protocol {proto} needs PostgreSQL "
                f"{needed // 10000} or later, the server runs {running}; "
                f"use proto_version {max(usable, default=1)} or lower"
            )

    def plugin_options(self, server_version: int | None = None) -> list[tuple[str, str]]:
        """pgoutput options other than ``publication_names``, as (name, value) text.

        ``server_version`` chooses the protocol version (see :meth:`protocol`).
        """
        options = [("proto_version", str(self.protocol(server_version)))]
        if self.binary:
            options.append(("binary", "true"))
        if self.messages or self.heartbeat_interval is not None:
            options.append(("messages", "true"))
        if self.streaming:
            options.append(("streaming", "parallel" if self.streaming == "parallel" else "on"))
        if self.two_phase:
            options.append(("two_phase", "on"))
        if self.origin is not None:
            options.append(("origin", self.origin))
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
