"""What a WAL reader counts while it runs, and the frozen snapshot read from it.

A subscription owns one :class:`ReaderCounters` for its whole life (every
incarnation of its reader adds to it, so counters survive restarts, as
Prometheus expects of a ``_total``).  The reader increments plain attributes
at the points where things already happen (a batch handled, a transaction
acknowledged, a heartbeat seen); nothing is computed there.  Lags, states and
histograms are derived only when someone reads a :class:`ReaderMetrics`
snapshot (:meth:`ReaderCounters.snapshot`): no I/O, no message, cheap enough
to be taken at every Prometheus scrape.

Why the lag comes from the stream itself: the server's WAL end is in every
XLogData header and every keepalive the walsender sends, so "how many bytes
behind" needs no query (``pg_current_wal_insert_lsn()`` on a second
connection at every scrape would cost a round trip and race the stream).
The lag in seconds is the age of the commit of the oldest transaction
received and not yet acknowledged (the one at the handler): 0 when the
handler has nothing to do, growing while it is blocked.  With heartbeats on
(:mod:`otpy.pg.wal_reader`, ``heartbeat_interval``), a heartbeat that does not
come back is the other half: a reader that receives nothing at all.
"""

from __future__ import annotations

import collections
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import attrs

from otpy.pg.replication.lsn import LSN

if TYPE_CHECKING:
    from otpy.pg.replication.changes import ChangeBatch

    from .stream import ReplicationSession
    from .watch import SlotHealth

__all__ = [
    "HANDLER_BUCKETS",
    "HEARTBEAT_PREFIX",
    "ReaderCounters",
    "ReaderMetrics",
    "is_heartbeat",
]

#: Upper bounds (seconds) of the handler-duration histogram.
HANDLER_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.005,
    0.025,
    0.1,
    0.5,
    2.5,
    10.0,
    float("inf"),
)

#: Prefix of the logical messages readers emit as heartbeats.  Messages with
#: this prefix are never delivered to a handler, even with ``messages=True``
#: (every reader of a database sees every reader's heartbeats).
HEARTBEAT_PREFIX: Final = "otpy.heartbeat"

_MESSAGE: Final = "message"
#: Unseen heartbeats remembered (the oldest decides whether one is overdue).
_UNSEEN_MAX: Final = 64


def is_heartbeat(batch: ChangeBatch) -> bool:
    """Whether ``batch`` is a heartbeat (a non-transactional ``otpy.heartbeat`` message)."""
    if batch.xid is not None or len(batch) != 1:
        return False
    change = batch[0]
    return change.op == _MESSAGE and change.table == HEARTBEAT_PREFIX


@attrs.frozen
class ReaderMetrics:
    """A snapshot of one subscription's reader (see :func:`otpy.pg.metrics.snapshot`).

    Counters (``*_total``-like fields) count since the subscription started,
    across restarts of its reader.
    """

    slot: str
    """The replication slot."""
    database: str
    """The database, as a description safe for logs (``user@host:port/db``)."""
    state: str
    """``streaming``, ``standby`` (waiting for a slot used elsewhere), ``starting``
    (connecting or restarting after a crash) or ``stopped``."""
    received_lsn: LSN
    """Highest WAL position received from the server."""
    acknowledged_lsn: LSN
    """Flush position confirmed to the server: what the handler finished."""
    server_wal_end: LSN
    """The server's WAL end as last reported in the stream (XLogData or keepalive)."""
    lag_bytes: int
    """``server_wal_end - acknowledged_lsn`` (0 when not streaming)."""
    lag_seconds: float
    """Age of the oldest received, unacknowledged transaction's commit (0 when idle)."""
    last_acknowledged_commit_time: datetime | None
    """Commit time of the last acknowledged transaction (or heartbeat's send time)."""
    transactions: int
    """Transactions whose final batch the handler returned from."""
    changes: int
    """Changes handed to the handler (heartbeats excluded)."""
    batches: int
    """Calls of ``handle_replication_data``."""
    handler_seconds_total: float
    """Seconds spent in ``handle_replication_data``, summed."""
    handler_histogram: tuple[tuple[float, int], ...]
    """``(upper bound in seconds, calls)`` per bucket of :data:`HANDLER_BUCKETS`."""
    queue_depth: int
    """Batches received and not yet handled (bounded by ``queue_size`` plus one)."""
    restarts: int
    """Times the reader started streaming again after its first start."""
    last_error: str | None
    """Why the reader last crashed (None if it never did)."""
    heartbeats_sent: int
    """Heartbeats this subscription emitted."""
    heartbeats_received: int
    """Of them, those seen back in the stream."""
    heartbeat_overdue: bool
    """True when a heartbeat did not come back within ``heartbeat_timeout``."""
    slot_health: SlotHealth | None = None
    """The slot's WAL retention at the last check (``slot_check_interval``), if any."""

    @property
    def healthy(self) -> bool:
        """Streaming, and no heartbeat overdue: what ``/readyz`` asks of a reader."""
        return self.state == "streaming" and not self.heartbeat_overdue


class ReaderCounters:
    """The live counters of one subscription; updated by its reader, read by snapshots.

    Plain attributes, incremented in the reader's tasks (trio runs one task
    at a time, so no lock): that is the whole cost on the hot path.
    """

    __slots__ = (
        "batches",
        "changes",
        "handler_buckets",
        "handler_seconds",
        "heartbeat_timeout",
        "heartbeats_received",
        "heartbeats_sent",
        "in_flight_commit",
        "last_acked_commit",
        "last_error",
        "session",
        "slot_health",
        "standby",
        "transactions",
        "unseen_heartbeats",
    )

    def __init__(self) -> None:
        self.transactions = 0
        self.changes = 0
        self.batches = 0
        self.handler_seconds = 0.0
        self.handler_buckets = [0] * len(HANDLER_BUCKETS)
        #: Commit time of the transaction at the handler (None when idle).
        self.in_flight_commit: datetime | None = None
        self.last_acked_commit: datetime | None = None
        self.last_error: str | None = None
        #: The current incarnation's session (LSNs, queue depth).
        self.session: ReplicationSession | None = None
        self.standby = False
        self.heartbeats_sent = 0
        self.heartbeats_received = 0
        self.heartbeat_timeout: float | None = None
        #: Wall-clock send times of the heartbeats not seen back yet, oldest first
        #: (bounded: past the bound only the oldest matter).
        self.unseen_heartbeats: collections.deque[float] = collections.deque()
        self.slot_health: SlotHealth | None = None

    def handled(self, batch: ChangeBatch, seconds: float) -> None:
        """The handler returned from ``batch`` after ``seconds``."""
        self.batches += 1
        self.changes += len(batch)
        self.handler_seconds += seconds
        i = 0
        while seconds > HANDLER_BUCKETS[i]:
            i += 1
        self.handler_buckets[i] += 1
        if batch.final:
            self.transactions += 1
            if batch.commit_time is not None:  # None: a non-transactional message
                self.last_acked_commit = batch.commit_time
            self.in_flight_commit = None

    def heartbeat_sent(self, sent_at: float) -> None:
        """A heartbeat with wall-clock time ``sent_at`` was written."""
        self.heartbeats_sent += 1
        if len(self.unseen_heartbeats) < _UNSEEN_MAX:
            self.unseen_heartbeats.append(sent_at)

    def heartbeat_seen(self, payload: object, slot: str) -> None:
        """A heartbeat came back through the stream (and is acknowledged with it).

        ``payload`` is ``"<slot> <unix time>"``; another reader's heartbeat
        (same database, other slot) is filtered out but not counted here.
        """
        text = payload.decode() if isinstance(payload, bytes | bytearray) else str(payload)
        owner, _, stamp = text.rpartition(" ")
        if owner != slot:
            return
        try:
            sent_at = float(stamp)
        except ValueError:
            return
        self.heartbeats_received += 1
        unseen = self.unseen_heartbeats
        while unseen and unseen[0] <= sent_at:
            unseen.popleft()
        self.last_acked_commit = datetime.fromtimestamp(sent_at, UTC)
        self.in_flight_commit = None

    def snapshot(
        self, slot: str, database: str, *, streaming: bool, ended: bool, starts: int
    ) -> ReaderMetrics:
        """The :class:`ReaderMetrics` of this subscription now (no I/O)."""
        session = self.session
        if ended:
            state = "stopped"
        elif streaming:
            state = "streaming"
        elif self.standby:
            state = "standby"
        else:
            state = "starting"
        received = acked = end = LSN(0)
        depth = 0
        if session is not None:
            received, acked, depth = session.received, session.acked, session.pending
            end = LSN(max(session.wal_end, received))
        lag_bytes = max(0, end - acked) if state == "streaming" else 0
        now = time.time()
        lag_seconds = 0.0
        if self.in_flight_commit is not None:
            lag_seconds = max(0.0, now - self.in_flight_commit.timestamp())
        overdue = bool(
            self.heartbeat_timeout is not None
            and self.unseen_heartbeats
            and now - self.unseen_heartbeats[0] > self.heartbeat_timeout
        )
        return ReaderMetrics(
            slot=slot,
            database=database,
            state=state,
            received_lsn=received,
            acknowledged_lsn=acked,
            server_wal_end=end,
            lag_bytes=lag_bytes,
            lag_seconds=lag_seconds,
            last_acknowledged_commit_time=self.last_acked_commit,
            transactions=self.transactions,
            changes=self.changes,
            batches=self.batches,
            handler_seconds_total=self.handler_seconds,
            handler_histogram=tuple(zip(HANDLER_BUCKETS, self.handler_buckets, strict=True)),
            queue_depth=depth,
            restarts=max(0, starts - 1),
            last_error=self.last_error,
            heartbeats_sent=self.heartbeats_sent,
            heartbeats_received=self.heartbeats_received,
            heartbeat_overdue=overdue,
            slot_health=self.slot_health,
        )
