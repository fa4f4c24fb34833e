"""The reader actor, and :func:`subscribe` / :func:`unsubscribe` that start and stop one.

One :class:`WalReader` incarnation serves one :class:`~.subscription.Subscription`
from ``init`` to ``terminate``; a crash ends the incarnation and the
readers' supervisor starts a new one (with backoff) for the same
subscription.  Its life is one :class:`ReaderPhase`, changed in one place
(``WalReader._enter``): STARTING in ``init``; then STANDBY (waiting for a busy
slot), SNAPSHOT (reading the initial snapshot) or STREAMING; STOPPING in
``terminate``.

Design and why:

* ``init`` does the whole start (connect, slot, START_REPLICATION) so that
  ``subscribe`` returns only once the slot is being read, or raises the
  specific error; streaming, standing by and the snapshot run in one
  background task, so ``terminate`` can cancel it and wait for it before it
  sends the last acknowledgement and releases the slot.
* The hot path (socket -> decoder -> ``WalReader._deliver`` -> the
  handler) holds no phase checks: the phase changes at the edges of a task,
  never per batch.
* A killed reader gets no ``terminate`` (the runtime skips it), so a
  cancelled background task that was not stopped by ``terminate`` aborts the
  session itself: the slot is never left held by a dead walsender.
* What must survive an incarnation (whether the slot was ever read, the
  failures of a transaction, the terminal error) lives on the subscription's
  :class:`~.subscription.ReaderState`, not here.
"""

from __future__ import annotations

import enum
import functools
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict

from otpy._util import only_cancelled, unwrap_group
from otpy.child_spec import ChildSpec, Restart
from otpy.dynamic_supervisor import DynamicSupervisor
from otpy.errors import ChildNotFound, InitError
from otpy.exit_reason import ExitReason
from otpy.gen_server import GenServer
from otpy.pg.config import ConnectorConfig, DatabaseConfig, libpq_settings
from otpy.pg.errors import ConfigError
from otpy.pg.replication.acks import AckTracker
from otpy.pg.replication.changes import ChangeBatch
from otpy.pg.replication.errors import (
    ChangesLost,
    HandlerFailed,
    InvalidName,
    ReaderStartTimeout,
    ReplicationError,
    SlotInUse,
)
from otpy.pg.replication.handler import HandlesReplication, check_handler
from otpy.pg.replication.lsn import LSN
from otpy.pg.replication.options import ReaderOptions
from otpy.pg.replication.pgoutput import is_compiled
from otpy.registry import whereis
from otpy.supervisor import start_child, terminate_child

from . import dead_letters
from .metrics import HEARTBEAT_PREFIX, is_heartbeat
from .slots import validate_publication_name, validate_slot_name
from .snapshot import SnapshotRun, on_watermarks
from .stream import ReplicationSession
from .subscription import Subscription, Terminal, claim, forget
from .watch import check_slot

__all__ = [
    "CONNECTOR_APP",
    "READERS_SUPERVISOR",
    "TRANSITIONS",
    "ReaderPhase",
    "WalReader",
    "readers_supervisor_spec",
    "resolve_database",
    "subscribe",
    "unsubscribe",
]

logger = logging.getLogger("otpy.pg.wal_reader")

#: Registered name of the WAL readers' dynamic supervisor (see :func:`readers_supervisor_spec`).
READERS_SUPERVISOR = "otpy.pg.wal_readers"
#: Application whose environment holds configured databases (``databases`` or ``config``).
CONNECTOR_APP = "otpy.pg"

_ids = itertools.count(1)


def readers_supervisor_spec(
    name: Any = READERS_SUPERVISOR,
    *,
    intensity: int = 1000,
    period: float = 60.0,
    max_children: int | None = None,
) -> ChildSpec:
    """The child spec of the WAL readers' :class:`~otpy.DynamicSupervisor`.

    The connector application includes it; ``subscribe`` finds it by ``name``.
    Its intensity is high on purpose: reader restarts are already paced by
    each reader's exponential backoff, and a server restart fails every reader
    at once, which must not make the supervisor give up on all of them.
    """
    return DynamicSupervisor.child_spec(
        id=name, name=name, intensity=intensity, period=period, max_children=max_children
    )


def _server_key(kwargs: Mapping[str, Any], slot: str) -> tuple[str, str, str]:
    """(host, port, slot) as libpq resolves them: slot names are cluster-wide.

    Taken from libpq's own view (service file, ``PG*`` environment, defaults),
    so two databases configured only through the environment or a service
    on different servers do not share a key.
    """
    settings = libpq_settings(kwargs)
    host = settings.get("host") or settings.get("hostaddr") or ""
    return (host, settings.get("port") or "5432", slot)


def resolve_database(db_opts: Any) -> tuple[dict[str, Any], str]:
    """Turn ``db_opts`` into (libpq keyword arguments, safe description).

    Accepts a :class:`~otpy.pg.config.DatabaseConfig`; a mapping with the same
    keys (epg_connector's ``DbOpts``; a ``replication`` key is ignored); a
    libpq DSN (``"host=... dbname=..."`` or ``"postgresql://..."``; ``""``
    leaves everything to libpq's environment and defaults, as libpq does); or the name
    of a database configured in the connector application's environment
    (``otpy.get_env("otpy.pg", "databases")`` or ``"config"``).

    Raises:
        ConfigError: invalid settings or an unknown configured name.
    """
    if isinstance(db_opts, DatabaseConfig):
        return db_opts.connect_kwargs(), db_opts.describe()
    if isinstance(db_opts, Mapping):
        entry = {k: v for k, v in db_opts.items() if k not in ("replication", "name")}
        name = str(db_opts.get("name", "wal_reader"))
        config = ConnectorConfig.from_mapping({"databases": {name: entry}})
        db = config.databases[name]
        return db.connect_kwargs(), db.describe()
    if isinstance(db_opts, str):
        if not db_opts or "=" in db_opts or "://" in db_opts:  # "": all from libpq
            # Checked as a configured database (errors without the password,
            # missing files, unknown service); the keywords are passed as given.
            db = DatabaseConfig.from_dsn(
                "db_opts", db_opts, ignore=("replication",), path="db_opts"
            )
            params = conninfo_to_dict(db_opts)  # cannot fail: from_dsn parsed it
            params.pop("replication", None)
            return dict(params), db.describe()
        from otpy.application import get_env

        databases = get_env(CONNECTOR_APP, "databases")
        config = get_env(CONNECTOR_APP, "config")
        if databases is None and isinstance(config, ConnectorConfig):
            databases = config.databases
        if isinstance(databases, Mapping) and db_opts in databases:
            return resolve_database(databases[db_opts])
        raise ConfigError(
            "db_opts",
            f"unknown database {db_opts!r}: not a DSN, and not configured in the "
            f"{CONNECTOR_APP!r} application environment",
        )
    raise ConfigError(
        "db_opts", f"expected a DatabaseConfig, a mapping, a DSN or a name, got {db_opts!r}"
    )


def _being_cancelled() -> bool:
    """Whether the calling task runs in a cancelled scope (its actor is being killed)."""
    return trio.current_effective_deadline() == -math.inf


@functools.cache
def _log_decoder_build() -> None:
    """Say once per process whether pgoutput is decoded by compiled C or interpreted.

    An install without a C compiler decodes about 2x slower (see
    docs/pgoutput.md); a reader falling behind is easier to explain with this
    line in the log.
    """
    compiled = is_compiled()
    logger.log(
        logging.DEBUG if compiled else logging.INFO,
        "pgoutput decoder: %s",
        "compiled by mypyc"
        if compiled
        else "interpreted (otpy was installed without compiling it; decoding is ~2x slower)",
        extra={"event": "replication_decoder", "compiled": compiled},
    )


class ReaderPhase(enum.Enum):
    """Where one reader incarnation is in its life (:attr:`WalReader.phase`).

    An incarnation moves forward only; :data:`TRANSITIONS` lists the allowed
    moves and ``WalReader._enter`` is the one place that makes them::

        STARTING  -> STANDBY | SNAPSHOT | STREAMING | STOPPING
        STANDBY   -> SNAPSHOT | STREAMING | STOPPING
        SNAPSHOT  -> STREAMING | STOPPING
        STREAMING -> STOPPING
        STOPPING  (final: a restart is a new incarnation, back at STARTING)

    In STANDBY, SNAPSHOT and STREAMING one background task of the reader
    runs (or is about to): ``terminate`` cancels it and waits for it.  From
    SNAPSHOT on, the handler has seen data, so stopping calls
    ``handle_replication_stop``; from STARTING or STANDBY only a terminal
    stop does.
    """

    STARTING = "starting"
    """``init`` runs: connect, check the publications, create or find the slot,
    START_REPLICATION (or prepare the initial snapshot).  No background task."""
    STANDBY = "standby"
    """The slot is busy elsewhere and ``standby`` is on: the background task
    waits to take it over.  The handler has seen nothing."""
    SNAPSHOT = "snapshot"
    """The background task reads the initial snapshot into the handler;
    START_REPLICATION follows (unless ``snapshot="initial_only"``)."""
    STREAMING = "streaming"
    """START_REPLICATION was accepted: the socket reader, the status sender and
    the deliveries run, until the stream ends or ``terminate`` cancels them."""
    STOPPING = "stopping"
    """``terminate`` runs: cancel and await the background task, send the last
    acknowledgement, close the session, call ``handle_replication_stop``."""


#: The moves :class:`ReaderPhase` allows, from each phase.
TRANSITIONS: Final[Mapping[ReaderPhase, frozenset[ReaderPhase]]] = {
    ReaderPhase.STARTING: frozenset(
        {ReaderPhase.STANDBY, ReaderPhase.SNAPSHOT, ReaderPhase.STREAMING, ReaderPhase.STOPPING}
    ),
    ReaderPhase.STANDBY: frozenset(
        {ReaderPhase.SNAPSHOT, ReaderPhase.STREAMING, ReaderPhase.STOPPING}
    ),
    ReaderPhase.SNAPSHOT: frozenset({ReaderPhase.STREAMING, ReaderPhase.STOPPING}),
    ReaderPhase.STREAMING: frozenset({ReaderPhase.STOPPING}),
    ReaderPhase.STOPPING: frozenset(),
}

#: Phases in which a background task of the reader runs: ``terminate`` waits for it.
_BACKGROUND: Final = frozenset({ReaderPhase.STANDBY, ReaderPhase.SNAPSHOT, ReaderPhase.STREAMING})
#: Phases in which the handler has seen data: stopping calls ``handle_replication_stop``.
_DELIVERING: Final = frozenset({ReaderPhase.SNAPSHOT, ReaderPhase.STREAMING})


class WalReader(GenServer):
    """The reader actor of one subscription (one incarnation; restarted as a new instance).

    ``init`` connects, checks publications, creates or finds the slot and
    starts replication (in standby mode it may instead wait for the slot in
    the background).  Streaming runs in background tasks: the socket reader,
    the status sender and the handler loop.  ``terminate`` sends the last
    acknowledgement, closes, waits for the slot to be released and calls
    ``handle_replication_stop``.  :attr:`phase` says which of these it is
    doing (:class:`ReaderPhase`).
    """

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.session = ReplicationSession(
            subscription.connect_kwargs,
            subscription.slot,
            subscription.publications,
            subscription.options,
        )
        #: Where this incarnation is in its life; changed only by ``_enter``.
        self.phase = ReaderPhase.STARTING
        # The cancel scope of the background task's current step (cancelled by
        # terminate), and the event the task sets when it ends.
        self._scope: trio.CancelScope | None = None
        self._stream_done = trio.Event()
        #: The terminal error this incarnation stops with, if any.
        self._terminal: Terminal | None = None
        #: Transactions (final batches) handled by this incarnation.
        self.transactions = 0
        # A reader that already streamed from its persistent slot never re-creates it.
        self.session.create_missing = not subscription.state.slot_seen
        subscription.counters.session = self.session
        subscription.counters.standby = False
        subscription.counters.heartbeat_timeout = subscription.options.effective_heartbeat_timeout
        # Optional hooks of consumers that store their own position (exactly-once).
        handler = subscription.handler
        check = getattr(handler, "check_replication_start", None)
        if check is not None:
            self.session.check_start = functools.partial(check, subscription)
        self._progress = getattr(handler, "handle_replication_progress", None)
        self.session.idle_progress = self._progress is not None
        #: The initial snapshot of this incarnation (.snapshot), if asked for.
        self.snapshot = (
            SnapshotRun(self.session) if subscription.options.snapshot != "never" else None
        )

    def __repr__(self) -> str:
        return f"<WalReader slot={self.subscription.slot!r}>"

    @property
    def standby(self) -> bool:
        """True while this reader waits for its busy slot (:attr:`ReaderPhase.STANDBY`)."""
        return self.phase is ReaderPhase.STANDBY

    def _enter(self, phase: ReaderPhase) -> None:
        """Move to ``phase``: the one place where the lifecycle changes (:data:`TRANSITIONS`)."""
        if phase not in TRANSITIONS[self.phase]:
            raise AssertionError(f"{self!r}: no move from {self.phase.name} to {phase.name}")
        self.phase = phase
        if phase is ReaderPhase.STANDBY:
            self.subscription.counters.standby = True
        elif phase is not ReaderPhase.STOPPING:
            self.subscription.counters.standby = False

    def _stopped_before_start(self) -> bool:
        """Whether ``terminate`` began before this background task ran its first line.

        Then the task has nothing to do: it says it is done and returns.
        """
        if self.phase is ReaderPhase.STOPPING:
            self._stream_done.set()
            return True
        return False

    async def init(self) -> None:
        """Open the session; in standby mode a busy slot is waited for in the background.

        The whole start is bounded by the ``connect_timeout`` option
        (:class:`ReaderStartTimeout`).  On a restart, a terminal error
        (:class:`ChangesLost`) does not fail ``init`` (the supervisor would
        retry it forever): the reader starts and stops at once with a
        ``shutdown`` reason carrying the error.
        """
        _log_decoder_build()
        try:
            await self._bounded(
                self.session.open if self.snapshot is None else self.snapshot.prepare
            )
        except ChangesLost as exc:
            if not self.subscription.state.started:
                await self._close_quietly()
                raise  # a first start: subscribe's caller gets it
            self._stop_for_good(exc)
            return
        except SlotInUse:
            if not self.subscription.options.standby:
                await self._close_quietly()
                raise
            self._enter(ReaderPhase.STANDBY)
            logger.info(
                "slot %s is in use elsewhere: standing by",
                self.subscription.slot,
                extra={"event": "replication_standby", "slot": self.subscription.slot},
            )
            self.subscription.state.started = True
            self.start_soon(self._standby)
            return
        except BaseException:
            await self._close_quietly()
            raise
        if self.snapshot is not None and self.snapshot.pending:
            self.subscription.state.started = True
            self._enter(ReaderPhase.SNAPSHOT)
            self.start_soon(self._snapshot_then_stream)
            return
        self._started_streaming()
        self._enter(ReaderPhase.STREAMING)
        self.start_soon(self._stream)

    async def _snapshot_then_stream(self) -> None:
        """Read the initial snapshot into the handler, then START_REPLICATION and stream.

        The slot's walsender stays idle meanwhile (its exported snapshot
        lives only so long).  ``initial_only`` ends the subscription instead
        of streaming.
        """
        snapshot = self.snapshot
        assert snapshot is not None
        sub = self.subscription
        if self._stopped_before_start():
            return

        async def read_then_start() -> None:
            await snapshot.run(functools.partial(sub.handler.handle_replication_data, sub))
            if snapshot.stream_after:
                await self._bounded(self.session.start)

        if not await self._unless_terminated(read_then_start):
            return
        if not snapshot.stream_after:  # initial_only: done, the subscription ends
            forget(sub)
            sub.state.end()
            self._stream_done.set()
            self.stop()
            return
        self._started_streaming()
        self._enter(ReaderPhase.STREAMING)
        await self._stream()

    def _started_streaming(self) -> None:
        """START_REPLICATION was accepted: later starts are restarts of a read slot."""
        state = self.subscription.state
        state.started = True
        if not self.subscription.options.temporary:
            state.slot_seen = True

    async def _bounded(self, start: Callable[[], Awaitable[None]]) -> None:
        """Run one start step within ``connect_timeout``; :class:`ReaderStartTimeout` beyond."""
        timeout = self.subscription.options.connect_timeout
        with trio.move_on_after(timeout) as scope:
            await start()
        if scope.cancelled_caught:
            sub = self.subscription
            raise ReaderStartTimeout(sub.slot, self.session.phase, timeout, sub.database)

    def _stop_for_good(self, error: Terminal) -> None:
        """Stop with a terminal error: a ``shutdown`` exit, which is not restarted."""
        self._terminal = error
        self.stop(ExitReason.shutdown(error))

    async def _close_quietly(self) -> None:
        with trio.CancelScope(shield=True):
            await self.session.close(final_ack=False, release_timeout=0)

    async def _unless_terminated(self, step: Callable[[], Awaitable[None]]) -> bool:
        """Run a start step that ``terminate`` may cancel; whether the reader goes on.

        False (and ``_stream_done`` set) when ``terminate`` stopped it; an
        error is raised with ``_stream_done`` set, and a kill (a cancellation
        not from ``terminate``) aborts the session first: no ``terminate``
        will close its sockets.
        """
        try:
            with trio.CancelScope() as scope:  # cancelled by terminate
                self._scope = scope
                await step()
        except BaseException as exc:
            if isinstance(exc, trio.Cancelled) and self.phase is not ReaderPhase.STOPPING:
                self.session.abort()
            self._stream_done.set()
            raise
        if scope.cancelled_caught or self.phase is ReaderPhase.STOPPING:
            self._stream_done.set()
            return False
        return True

    async def _standby(self) -> None:
        if self._stopped_before_start():
            return
        snapshot = self.snapshot  # .snapshot: maybe read one first
        start = self.session.start if snapshot is None else snapshot.prepare
        try:
            if not await self._unless_terminated(
                functools.partial(self.session.take_over, functools.partial(self._bounded, start))
            ):
                return
        except ChangesLost as exc:  # _stream_done is set
            self._stop_for_good(exc)
            return
        snapshot_first = self.snapshot is not None and self.snapshot.pending
        self._enter(ReaderPhase.SNAPSHOT if snapshot_first else ReaderPhase.STREAMING)
        self._started_streaming()
        logger.info(
            "slot %s was freed: taking over",
            self.subscription.slot,
            extra={"event": "replication_takeover", "slot": self.subscription.slot},
        )
        if snapshot_first:
            await self._snapshot_then_stream()
            return
        await self._stream()

    async def _stream(self) -> None:
        if self._stopped_before_start():
            return
        session = self.session
        self.subscription.state.set_streaming(True)
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                send, recv = trio.open_memory_channel[ChangeBatch](
                    self.subscription.options.queue_size
                )
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(session.read_loop, send)
                        nursery.start_soon(session.status_loop)
                        nursery.start_soon(self._deliver, recv)
                        if self.subscription.options.heartbeat_interval is not None:
                            nursery.start_soon(self._heartbeat)
                        if self.subscription.options.slot_check_interval is not None:
                            nursery.start_soon(self._watch_slot)
                except BaseExceptionGroup as group:
                    raise unwrap_group(group) from None
        except BaseException as exc:
            if self.phase is not ReaderPhase.STOPPING and (
                only_cancelled(exc) or _being_cancelled()
            ):
                # Killed, possibly while a task crashed: no terminate will run
                # (the runtime skips it for a killed actor), so do not leave
                # the slot held by our walsender.
                session.abort()
            raise
        finally:
            self.subscription.state.set_streaming(False)
            self._stream_done.set()

    async def _deliver(self, recv: trio.MemoryReceiveChannel[ChangeBatch]) -> None:
        handler = self.subscription.handler
        sub = self.subscription
        session = self.session
        policy = sub.options.on_failure
        acks = self._ack_tracker() if sub.options.manual_ack else None
        parking: int | None = None  # dead letter of the transaction being parked
        failures = sub.state.failures
        counters = sub.counters
        clock = time.perf_counter
        watermarks = sub.options.messages
        batch: ChangeBatch | None = None
        while True:
            try:  # what is queued already is handled without a scheduler pass per batch
                batch = recv.receive_nowait()
            except trio.WouldBlock:
                # Not held while waiting: a handled batch kept alive meanwhile
                # would be promoted to the oldest GC generation (docs/performance.md).
                batch = None
                try:
                    batch = await recv.receive()
                except trio.EndOfChannel:
                    return
            except trio.EndOfChannel:
                return
            if watermarks:  # backfills' watermarks (.snapshot), removed from the batch
                await on_watermarks(sub, batch)
            heartbeat = batch.xid is None and is_heartbeat(batch)
            if heartbeat:
                counters.heartbeat_seen(batch[0].data, sub.slot)  # never delivered
            if batch.final and (heartbeat or not batch) and not await self._recorded(batch):
                session.pending -= 1  # not stored by the consumer yet: offered again later
                continue
            if acks is not None:
                if batch.chunk == 0:
                    await acks.wait_room()  # at the cap: backpressure
                if batch.final:  # outstanding before the call: the handler may ack at once
                    acks.delivered(batch.commit_lsn, batch.end_lsn)
            if not heartbeat:
                if batch.chunk == 0:
                    counters.in_flight_commit = batch.commit_time
                start = clock()
                if parking is not None:  # later chunks of a parked transaction
                    assert policy.pool is not None
                    await dead_letters.park_more(policy.pool, parking, batch, policy.table)
                elif (
                    batch.chunk == 0
                    and failures.commit_lsn is not None
                    and policy.gives_up
                    and (error := failures.exhausted(batch.commit_lsn, policy.max_attempts))
                ):
                    # It failed on a later chunk: parked whole, from its first chunk.
                    parking = await self._give_up(batch, error, failures.attempts)
                elif batch:
                    try:
                        await handler.handle_replication_data(sub, batch)
                    except Exception as exc:
                        attempts = failures.failed(batch.commit_lsn, exc)
                        if not policy.gives_up or attempts < policy.max_attempts:
                            raise
                        if batch.chunk > 0 and policy.policy == "park":
                            # The earlier chunks are gone from memory, and a handler
                            # that held them in a transaction of its own (exactly-once)
                            # rolled them back: parking from here would lose them.
                            # Redelivered from chunk 0, the transaction is parked whole.
                            raise
                        parking = await self._give_up(batch, exc, attempts)
                counters.handled(batch, clock() - start)
            if batch.final:
                if parking is not None:
                    # Parked, not applied: a consumer storing its own position
                    # records it before the slot moves past (no false mismatch).
                    await self._recorded(batch)
                failures.succeeded(batch.commit_lsn)
                self.transactions += 1
                if acks is None:
                    session.acknowledge(batch.end_lsn)
                elif parking is not None or heartbeat or not batch:  # no handler to confirm
                    acks.ack(batch.commit_lsn)
                parking = None
                if acks is not None:
                    continue  # pending drops when the acknowledged prefix is released
            session.pending -= 1

    async def _recorded(self, batch: ChangeBatch) -> bool:
        """Whether a position the handler did not apply may be acknowledged now.

        A handler that stores its own position (``handle_replication_progress``,
        e.g. :class:`~otpy.pg.exactly_once.ExactlyOnceHandler`) is told first,
        so the slot never moves past what it stored: idle keepalives, empty
        transactions, heartbeats and parked transactions all pass here.
        """
        progress = self._progress
        return progress is None or bool(await progress(self.subscription, batch.end_lsn))

    def _ack_tracker(self) -> AckTracker:
        """A fresh tracker for this incarnation: what the previous one delivered comes again."""
        session = self.session

        def release(end_lsn: LSN, count: int) -> None:
            session.acknowledge(end_lsn)
            session.pending -= count  # no longer in flight: keepalives may acknowledge again

        tracker = AckTracker(self.subscription.options.max_unacked, release)
        self.subscription.state.acks = tracker
        return tracker

    async def _give_up(self, batch: ChangeBatch, exc: Exception, attempts: int) -> int:
        """``max_attempts`` failures of one transaction: stop for good, or park it.

        Returns the dead letter's id (``park``); with ``stop`` it never returns
        (the reader stops and ``terminate`` cancels this task).
        """
        sub = self.subscription
        policy = sub.options.on_failure
        if policy.policy == "stop":
            error = HandlerFailed(sub.slot, batch.commit_lsn, batch.xid, attempts, exc)
            error.__cause__ = exc
            self._stop_for_good(error)
            await trio.sleep_forever()
        assert policy.pool is not None
        letter = await dead_letters.park(
            policy.pool,
            slot=sub.slot,
            batch=batch,
            error=exc,
            attempts=attempts,
            table=policy.table,
        )
        logger.warning(
            "slot %s: the handler failed %d times on transaction xid %s (commit %s): "
            "parked as dead letter #%d in %s (%s: %s); going on",
            sub.slot,
            attempts,
            batch.xid,
            batch.commit_lsn,
            letter,
            policy.table,
            type(exc).__name__,
            exc,
            extra={
                "event": "replication_parked",
                "slot": sub.slot,
                "commit_lsn": str(batch.commit_lsn),
                "dead_letter": letter,
            },
        )
        return letter

    async def _heartbeat(self) -> None:
        """Emit a heartbeat every ``heartbeat_interval`` on the session's normal connection.

        A non-transactional logical message: the walsender sends it back at
        once (outside any transaction), which proves the whole path, and its
        acknowledgement moves the slot even when this database is idle.
        """
        sub = self.subscription
        interval = sub.options.heartbeat_interval
        assert interval is not None
        while True:
            meta = self.session.meta
            if meta is None:
                return
            sent_at = time.time()
            sub.counters.heartbeat_sent(sent_at)
            try:
                with trio.move_on_after(interval):
                    await meta.execute(
                        "SELECT pg_catalog.pg_logical_emit_message(false, %s, %s)",
                        [HEARTBEAT_PREFIX, f"{sub.slot} {sent_at!r}"],
                    )
            except psycopg.Error as exc:
                logger.warning(
                    "slot %s: cannot emit a heartbeat: %s",
                    sub.slot,
                    exc,
                    extra={"event": "replication_heartbeat_failed", "slot": sub.slot},
                )
            await trio.sleep(interval)

    async def _watch_slot(self) -> None:
        """Read the slot's WAL retention every ``slot_check_interval``; warn when at risk.

        Each kind of risk is logged once (``replication_slot_at_risk``), and
        again only after the slot was fine in between.
        """
        sub = self.subscription
        interval = sub.options.slot_check_interval
        assert interval is not None
        warned: str | None = None  # the risk already logged
        while True:
            meta = self.session.meta
            if meta is None:
                return
            try:
                with trio.move_on_after(interval):
                    health = await check_slot(meta, sub.slot)
                    sub.counters.slot_health = health
                    risk = None if health is None else health.risk
                    if health is not None and risk is not None and risk != warned:
                        logger.warning(
                            "slot %s: %s",
                            sub.slot,
                            health.warning(),
                            extra={
                                "event": "replication_slot_at_risk",
                                "slot": sub.slot,
                                "risk": risk,
                                "retained_bytes": health.retained_bytes,
                            },
                        )
                    warned = risk
            except psycopg.Error as exc:
                logger.debug("slot %s: cannot check the slot: %s", sub.slot, exc)
            await trio.sleep(interval)

    @property
    def acked(self) -> LSN:
        """The flush position acknowledged to the server so far."""
        return self.session.acked

    async def terminate(self, reason: ExitReason) -> None:
        """Stop streaming, acknowledge what was handled, release the slot, call the stop hook."""
        was = self.phase
        self._enter(ReaderPhase.STOPPING)
        if self._scope is not None:
            self._scope.cancel()
        if was in _BACKGROUND:
            try:
                await self._stream_done.wait()
            except BaseException:
                self.session.abort()  # killed while stopping: do not leak the slot
                raise
        sub = self.subscription
        terminal = self._terminal
        if reason.abnormal:
            sub.counters.last_error = str(reason)
        try:
            await self.session.close(final_ack=True)
        finally:
            if terminal is None:
                logger.info(
                    "slot %s: replication stopped (%s), acknowledged up to %s",
                    sub.slot,
                    reason,
                    self.session.acked,
                    extra={
                        "event": "replication_stopped",
                        "slot": sub.slot,
                        "reason": str(reason),
                    },
                )
            else:
                # Terminal: say what happened and what to do; the subscription ends
                # (its slot name may be subscribed again) and no restart follows.
                logger.error(
                    "slot %s: replication stopped for good: %s",
                    sub.slot,
                    terminal,
                    extra={
                        "event": "replication_handler_failed"
                        if isinstance(terminal, HandlerFailed)
                        else "replication_slot_lost",
                        "slot": sub.slot,
                        "reason": type(terminal).__name__,
                    },
                )
                sub.state.error = terminal
                forget(sub)
            try:
                # A standby that never took over had no stream to end, unless it ends for good.
                if was in _DELIVERING or terminal is not None:
                    try:
                        await sub.handler.handle_replication_stop(sub, sub.slot)
                    except Exception:
                        logger.exception("slot %s: handle_replication_stop raised", sub.slot)
            finally:
                if terminal is not None:  # even if the stop hook was cancelled
                    sub.state.end()


async def subscribe(
    handler: HandlesReplication,
    db_opts: Any,
    slot_name: str,
    publications: Sequence[str],
    options: ReaderOptions | Mapping[str, Any] | None = None,
    *,
    supervisor: Any = READERS_SUPERVISOR,
) -> Subscription:
    """Start a reader for ``slot_name`` that calls ``handler``; return its subscription.

    Returns only after the reader connected, created or found the slot and
    the server accepted START_REPLICATION (or, with ``standby=True`` and a busy
    slot, after it started waiting for it).  A missing persistent slot is
    created here, on this first start only: once a reader streamed from it, a
    missing slot ends the subscription with :class:`SlotLost`.

    ``handler`` is a :class:`ReplicationHandler` subclass that implements
    ``handle_replication_data``, or any object with both
    ``handle_replication_data`` and ``handle_replication_stop`` as
    coroutine functions.

    Raises:
        InvalidHandler: the handler lacks a method or has a non-async one.
        InvalidName / InvalidOptions / ConfigError: bad arguments (nothing was started).
        AlreadySubscribed: this process already reads the slot (``.subscription``).
        SlotInUse: another session reads the slot (and ``standby`` is off).
        PublicationMissing: a publication does not exist (and ``create_publication`` is off).
        SlotMismatch: an existing slot of that name cannot be used.
        SlotInvalidated: the existing slot was invalidated by PostgreSQL.
        ReaderStartTimeout: the start took longer than the ``connect_timeout`` option.
        otpy.pg.errors.ConnectError / psycopg.Error: connection or authentication failure.
        ReplicationError: no readers supervisor is running.
    """
    check_handler(handler)
    slot = validate_slot_name(slot_name)
    if isinstance(publications, str | bytes) or not isinstance(publications, Sequence):
        raise InvalidName(f"publications must be a list of names, got {publications!r}")
    pubs = tuple(validate_publication_name(p) for p in publications)
    if not pubs:
        raise InvalidName("at least one publication is needed")
    opts = ReaderOptions.coerce(options)
    kwargs, description = resolve_database(db_opts)
    sup = whereis(supervisor)
    if sup is None:
        raise ReplicationError(
            f"no WAL readers supervisor {supervisor!r} is running: include "
            f"wal_reader.readers_supervisor_spec() in your supervision tree, or pass supervisor="
        )
    key = _server_key(kwargs, slot)
    sub = Subscription(
        slot=slot,
        publications=pubs,
        database=description,
        options=opts,
        handler=handler,
        supervisor=sup,
        key=key,
        child_id=("wal_reader", slot, next(_ids)),
        connect_kwargs=kwargs,
    )
    await claim(sub)
    spec = ChildSpec(
        id=sub.child_id,
        start=functools.partial(WalReader, sub),
        restart=Restart.TRANSIENT,
        name=sub.name,
        backoff=opts.restart_backoff,
        shutdown=opts.shutdown_timeout,
    )
    try:
        await start_child(sup, spec)
    except InitError as exc:
        forget(sub)
        error = exc.reason.error
        if isinstance(error, Exception):
            raise error from None
        raise
    except BaseException:
        forget(sub)
        raise
    return sub


async def unsubscribe(ref: Subscription) -> None:
    """Stop the reader of ``ref`` and forget it; idempotent.

    The reader sends its last acknowledgement, closes its session, waits until
    the slot is released (so the slot can be subscribed again at once) and
    calls ``handle_replication_stop``.  A temporary slot is dropped by the
    server; a persistent one stays, positioned after the last handled
    transaction.
    """
    try:
        if ref.supervisor.alive:
            await terminate_child(ref.supervisor, ref.child_id)
    except ChildNotFound:
        pass
    finally:
        forget(ref)
        ref.state.end()
