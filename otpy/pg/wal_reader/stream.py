"""One replication session: connect, slot, START_REPLICATION, read, acknowledge.

:class:`ReplicationSession` owns two connections to the database:

* the walsender session (``replication=database``) that streams pgoutput in
  COPY_BOTH mode;
* a normal connection for what a walsender cannot do: catalog checks
  (publications, slots, with real query parameters) and fetching the
  ``TypeInfo`` of user types announced by Type messages.

Three loops run concurrently while streaming (see :mod:`otpy.pg.wal_reader`):
:meth:`~ReplicationSession.read_loop` reads the socket, answers keepalives and
assembles transactions into a *bounded* channel; the handler loop (the
reader's) consumes that channel and calls the user; :meth:`status_loop` sends
standby status updates.  Because the socket is read by its own task, keepalives
are answered while the handler runs; because the channel is bounded, a slow
handler stops the socket from being read (TCP backpressure, bounded memory)
while periodic status updates keep the walsender from timing out.

Acknowledgement rule: the *flush* position sent to the server is
:attr:`~ReplicationSession.acked`, which only moves (a) to a transaction's
``end_lsn`` after the handler returned from its final batch, or (b) to a
keepalive's WAL end when nothing at all is in flight (no partial transaction,
nothing queued or being handled), so that an idle slot does not retain WAL.
With :attr:`~ReplicationSession.idle_progress` (a handler that stores its own
position, see :mod:`otpy.pg.exactly_once`), that keepalive end goes through
the handler loop first and is acknowledged only once the handler recorded it.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import trio
from psycopg import errors as pg_errors

from otpy.pg.connection import TrioConnection
from otpy.pg.copy_both import (
    ReplicationConnection,
    finish_copy_both,
    replication_connect,
    send_copy_data,
    start_copy_both,
    wait_copy_data,
)
from otpy.pg.errors import ConnectionClosedError
from otpy.pg.replication.changes import ChangeBatch, TransactionAssembler
from otpy.pg.replication.errors import SlotInUse, StreamEnded
from otpy.pg.replication.lsn import LSN, lsn_from_u64
from otpy.pg.replication.options import ReaderOptions
from otpy.pg.replication.pgoutput import (
    Delete,
    Insert,
    PgOutputDecoder,
    Relation,
    Type,
    Update,
    decode_message,
)
from otpy.pg.replication.protocol import XLOG_HEADER, decode_copy_data, encode_standby_status
from otpy.pg.replication.values import TypeRefreshNeeded, ValueDecoder

from .slots import (
    check_publications,
    ensure_slot,
    lookup_slot,
    slot_gone_error,
    slot_in_use_error,
    start_replication_command,
)
from .typefetch import afetch_missing_types
from .watch import DEFAULT_STATUS_INTERVAL, status_interval_for

__all__ = ["ReplicationSession", "fetch_types"]

#: Backend PID -> replication connection, for the sessions this process opened.
_OWN_WALSENDERS: weakref.WeakValueDictionary[int, ReplicationConnection] = (
    weakref.WeakValueDictionary()
)

logger = logging.getLogger("otpy.pg.wal_reader")

#: Where the pgoutput payload starts in an XLogData message (after its header).
_XLOG_SIZE = 1 + XLOG_HEADER.size
_ROW_MESSAGES = (Insert, Update, Delete)
#: Messages taken from libpq's buffer between two scheduler passes.
_BURST = 128
#: Acknowledgements of handled transactions are coalesced over this many seconds.
ACK_COALESCE = 0.01
#: Seconds a catalog look-up of user types may hold the stream up.
TYPE_FETCH_TIMEOUT = 5.0
#: Advisory lock class of the slot locks ("otpy"); the other key is ``hashtext(slot)``.
SLOT_LOCK_CLASS = 0x6F747079
#: Seconds a standby waits on the slot lock before it looks at the slot itself
#: (its holder may be a machine that vanished without closing its sockets, or a
#: reader that does not take the lock): the takeover is at most this late.
TAKEOVER_POLL = 1.0
_LOCK = "SELECT pg_catalog.pg_advisory_lock(%s, pg_catalog.hashtext(%s))"
_TRY_LOCK = "SELECT pg_catalog.pg_try_advisory_lock(%s, pg_catalog.hashtext(%s))"


async def fetch_types(conn: psycopg.AsyncConnection[Any], decoder: ValueDecoder, slot: str) -> None:
    """Fetch and register ``decoder``'s missing user types, within ``TYPE_FETCH_TIMEOUT``.

    A look-up that fails or takes too long gives the types up: their values
    are delivered as text, the stream (or snapshot) is never held up by a
    catalog query.  Used by the stream and by snapshots and backfills, so that
    every path decodes a user type the same way.
    """
    try:
        with trio.move_on_after(TYPE_FETCH_TIMEOUT) as scope:
            await afetch_missing_types(conn, decoder)
        if scope.cancelled_caught:
            raise psycopg.OperationalError(f"no answer within {TYPE_FETCH_TIMEOUT} s")
    except psycopg.Error as exc:
        logger.warning(
            "slot %s: cannot fetch user types (%s); their values are delivered as text",
            slot,
            exc,
        )
        for oid in decoder.missing_types():
            decoder.give_up(oid)


class ReplicationSession:
    """The walsender session of one reader, from connection to final acknowledgement.

    Args:
        connect_kwargs: libpq parameters (password included; never logged).
        slot: a validated slot name.
        publications: validated publication names.
        options: the reader's options.
    """

    def __init__(
        self,
        connect_kwargs: dict[str, Any],
        slot: str,
        publications: tuple[str, ...],
        options: ReaderOptions,
    ) -> None:
        self.connect_kwargs = connect_kwargs
        self.slot = slot
        self.publications = publications
        self.options = options
        self.repl: ReplicationConnection | None = None
        self.meta: TrioConnection[Any] | None = None
        self.streaming = False
        #: The flush position confirmed to the server (only ever grows).
        self.acked = LSN(0)
        #: Highest WAL position received.
        self.received = LSN(0)
        #: The server's WAL end, as last reported in the stream (for the lag in bytes).
        self.wal_end = 0
        #: Seconds between status updates: the option, or derived from the server's.
        self.status_interval = options.status_interval or DEFAULT_STATUS_INTERVAL
        #: Batches sent to the handler channel and not yet handled.
        self.pending = 0
        self.last_status = 0.0
        self.decoder: ValueDecoder | None = None
        self.assembler: TransactionAssembler | None = None
        self._send_lock = trio.Lock()
        self._ack_event = trio.Event()
        self.backend_pid: int | None = None
        #: What the session is doing while it opens (for :class:`ReaderStartTimeout`).
        self.phase = "connecting"
        #: Whether a missing persistent slot may be created (a first start only).
        self.create_missing = True
        #: The server's ``server_version_num`` (known once connected).
        self.server_version: int | None = None
        #: Whether the ``meta`` connection holds the slot's advisory lock (see :meth:`take_over`).
        self.holds_lock = False
        #: Called with the slot's confirmed position before START_REPLICATION;
        #: raising refuses the start (a handler's ``check_replication_start``).
        self.check_start: Callable[[LSN], Awaitable[None]] | None = None
        #: When True, an idle keepalive position is not acknowledged here but
        #: queued as an empty final batch, acknowledged once the handler
        #: recorded it (``handle_replication_progress``): the consumer's stored
        #: position then never lags behind the slot's.
        self.idle_progress = False
        #: Set by :mod:`otpy.pg.wal_reader.snapshot` when it created the slot itself (with an
        #: exported snapshot, read before streaming): start from this LSN.
        self.prepared_start: LSN | None = None

    # ------------------------------------------------------------------ opening

    async def connect(self) -> None:
        """Open both connections and check (or create) the publications.

        Raises:
            InvalidOptions: the server is too old for the options (``proto_version``).
            PublicationMissing: see :func:`~otpy.pg.wal_reader.slots.check_publications`.
        """
        self.phase = "connecting"
        kwargs = dict(self.connect_kwargs)
        kwargs.setdefault("application_name", f"otpy_wal_reader:{self.slot}")
        self.meta = await TrioConnection.connect(autocommit=True, **kwargs)
        self.repl = await replication_connect(**kwargs)
        self.backend_pid = self.repl.pgconn.backend_pid
        _OWN_WALSENDERS[self.backend_pid] = self.repl
        self.server_version = self.repl.info.server_version
        self.options.check_server(self.server_version)
        self.status_interval = await status_interval_for(self.meta, self.options.status_interval)
        self.phase = "checking the publications"
        await check_publications(
            self.meta,
            self.publications,
            self.meta.info.dbname,
            self.options.create_publication,
        )

    async def start(self) -> None:
        """Create or find the slot and START_REPLICATION from its confirmed position.

        If the slot is held by a replication session *of this process* (a
        predecessor's connection that was not closed, e.g. still referenced by
        a crash's traceback), that session is closed and the start retried
        once: a process reads a slot through one subscription only, so such a
        session can only be a leftover.

        Raises:
            SlotInUse: the slot is streaming to another session.
            SlotMismatch: the slot exists with another plugin/database/kind.
            SlotLost: the persistent slot is missing and :attr:`create_missing` is off.
            SlotInvalidated: PostgreSQL invalidated the slot.
        """
        try:
            await self._start()
        except SlotInUse as exc:
            conn = _OWN_WALSENDERS.get(exc.active_pid or 0)
            if conn is None or conn is self.repl or self.meta is None:
                raise
            logger.warning(
                "slot %s is held by a leftover replication session of this process "
                "(backend PID %s): closing it",
                self.slot,
                exc.active_pid,
                extra={"event": "replication_leftover_closed", "slot": self.slot},
            )
            _hard_close(conn)
            assert exc.active_pid is not None
            with trio.move_on_after(5):
                await self._wait_released(self.meta, exc.active_pid)
            await self._start()

    async def _start(self) -> None:
        assert self.repl is not None and self.meta is not None
        self.phase = "creating the slot"
        if self.prepared_start is not None:  # created with a snapshot (.snapshot)
            confirmed = self.prepared_start
        else:
            confirmed = await ensure_slot(
                self.repl,
                self.meta,
                self.slot,
                temporary=self.options.temporary,
                database=self.meta.info.dbname,
                create_missing=self.create_missing,
                failover=self.options.failover,
                two_phase=self.options.two_phase,
            )
        self.acked = confirmed
        self.received = confirmed
        if self.check_start is not None:
            self.phase = "checking the consumer's position"
            await self.check_start(confirmed)
        command = start_replication_command(
            self.slot, self.publications, self.options.plugin_options(self.server_version)
        )
        self.phase = "starting replication"
        try:
            await start_copy_both(self.repl, command)
        except pg_errors.ObjectInUse as exc:
            raise slot_in_use_error(self.slot, exc) from None
        except (pg_errors.ObjectNotInPrerequisiteState, pg_errors.UndefinedObject) as exc:
            gone = await slot_gone_error(
                self.meta, self.slot, exc, temporary=self.options.temporary
            )
            if gone is exc:
                raise
            raise gone from exc
        self.phase = "streaming"
        self.streaming = True
        if not self.holds_lock:
            await self._try_lock()
        self.decoder = ValueDecoder(self.repl)
        self.decoder.refresh_on_failure = True  # see _refeed
        self.assembler = TransactionAssembler(self.decoder, self.options.max_batch_size)
        self.last_status = trio.current_time()
        logger.info(
            "slot %s: streaming from %s (publications %s)",
            self.slot,
            confirmed,
            ", ".join(self.publications),
            extra={"event": "replication_started", "slot": self.slot, "lsn": str(confirmed)},
        )

    async def _try_lock(self) -> None:
        """Take the slot's advisory lock, the signal standbys wait on, if it is free.

        Held by the ``meta`` connection for as long as the session lives: when this
        session ends (closed, or its process killed, which closes the socket)
        the lock is released and a standby waiting on it takes the slot over
        at once.  Not getting it (a standby holds it while trying the slot)
        only means standbys fall back to watching the slot.
        """
        assert self.meta is not None
        try:
            cur = await self.meta.execute(_TRY_LOCK, [SLOT_LOCK_CLASS, self.slot])
            row = await cur.fetchone()
        except psycopg.Error as exc:
            logger.debug("slot %s: cannot take the slot lock: %s", self.slot, exc)
            return
        self.holds_lock = bool(row and row[0])

    async def _wait_lock(self, patience: float) -> bool:
        """Wait up to ``patience`` seconds for the slot's advisory lock; whether it was taken.

        PostgreSQL's ``lock_timeout`` bounds the wait (advisory locks obey it),
        so the wait needs no query cancellation.
        """
        assert self.meta is not None
        await self.meta.execute(
            "SELECT pg_catalog.set_config('lock_timeout', %s, false)", [f"{int(patience * 1000)}ms"]
        )
        try:
            await self.meta.execute(_LOCK, [SLOT_LOCK_CLASS, self.slot])
        except pg_errors.LockNotAvailable:
            return False
        finally:
            await self.meta.execute("SELECT pg_catalog.set_config('lock_timeout', '0', false)")
        return True

    async def take_over(self, start: Callable[[], Awaitable[None]] | None = None) -> None:
        """Wait until the slot is free, then start streaming from it (a standby reader).

        The active reader of the slot holds an advisory lock keyed on the slot
        name on its normal connection (``_try_lock``); a standby blocks on
        that lock, so it wakes the moment the active session ends, then takes
        the slot, waiting out the few milliseconds its old walsender needs to
        exit.  Only the standby holding the lock tries the slot; the others
        stay queued on the lock.  Every :data:`TAKEOVER_POLL` seconds a queued
        standby also looks at the slot itself, so a holder that never releases
        the lock (its machine vanished: the walsender frees the slot after
        ``wal_sender_timeout``; or a client that does not take the lock) delays
        the takeover by at most that much.

        ``start`` is :meth:`start` bounded by the caller (``connect_timeout``).

        Raises:
            what :meth:`start` raises, except :class:`SlotInUse`.
        """
        assert self.meta is not None
        start = start or self.start
        while True:
            if not self.holds_lock:
                self.holds_lock = await self._wait_lock(TAKEOVER_POLL)
                if not self.holds_lock:
                    info = await lookup_slot(self.meta, self.slot)
                    if info is not None and info.active:
                        continue
            try:
                await start()
                return
            except SlotInUse as exc:
                busy = exc.active_pid
            if busy is None:
                await trio.sleep(TAKEOVER_POLL / 4)
            elif self.holds_lock:
                # Its walsender is exiting (the lock was released), or it is a
                # holder without the lock: watch it, quickly at first.
                await self._wait_released(self.meta, busy, cap=TAKEOVER_POLL / 4)

    async def open(self) -> None:
        """:meth:`connect` (unless connected) then :meth:`start`; the caller closes on error."""
        if self.repl is None:
            await self.connect()
        await self.start()

    # ------------------------------------------------------------------ streaming

    async def read_loop(self, out: trio.MemorySendChannel[ChangeBatch]) -> None:
        """Read the stream until it ends: decode, assemble, queue batches, answer keepalives.

        Raises:
            StreamEnded: the server ended the stream without an error.
            psycopg.Error / ConnectionClosedError: the session failed.
        """
        conn = self.repl
        assembler = self.assembler
        decoder = self.decoder
        assert conn is not None and assembler is not None and decoder is not None
        # Stream Start/Stop only exist with streaming on; without it the stateless
        # decoder is the same and saves a call per message.
        decode = PgOutputDecoder().decode if self.options.streaming else decode_message
        unpack = XLOG_HEADER.unpack_from
        feed = assembler.feed
        make_lsn = lsn_from_u64
        get_copy_data = conn.pgconn.get_copy_data
        consume_input = conn.pgconn.consume_input
        checkpoint = trio.lowlevel.checkpoint
        types_dirty = False
        burst = 0
        while True:
            # Fast path: take what libpq already buffered without a scheduler pass
            # per message; wait_copy_data() does the waiting, the end and the errors.
            try:
                nbytes, data = get_copy_data(1)
                if nbytes == 0:
                    # libpq's buffer is drained (16 kB, ~50 wide rows), but the server
                    # has most likely sent more meanwhile: read it now, and wait (a
                    # scheduler pass and an epoll call) only if there is nothing.
                    consume_input()
                    nbytes, data = get_copy_data(1)
            except psycopg.Error:
                nbytes = 0
            if nbytes == -1:
                # The server ended COPY: raise its error, if it sent one.
                await finish_copy_both(conn)
                raise StreamEnded(f"the server ended the replication stream of slot {self.slot!r}")
            if nbytes > 0:
                burst += 1
                if burst >= _BURST:
                    burst = 0
                    await checkpoint()
            else:
                burst = 0
                data = await wait_copy_data(conn)  # type: ignore[assignment]
                if data is None:
                    raise StreamEnded(
                        f"the server ended the replication stream of slot {self.slot!r}"
                    )
            if data[0] == 0x77:  # 'w'
                start, self.wal_end, _time = unpack(data, 1)
                msg = decode(data[_XLOG_SIZE:])
                kind = type(msg)
                lsn = make_lsn(LSN, start)
                if start > self.received:
                    self.received = lsn
                if kind is Relation or kind is Type:
                    types_dirty = True
                elif types_dirty and kind in _ROW_MESSAGES:
                    types_dirty = False
                    if decoder.missing_types():
                        await self._fetch_types(decoder)
                try:
                    batches = feed(lsn, msg)
                except TypeRefreshNeeded:
                    batches = await self._refeed(decoder, lsn, msg)
                if batches:
                    for batch in batches:
                        self.pending += 1
                        try:  # no scheduler pass per transaction while the queue has room
                            out.send_nowait(batch)
                        except trio.WouldBlock:
                            await out.send(batch)
                    # Dropped at once: held by these locals until the next batch, a
                    # batch's rows would outlive the handler and be promoted to the
                    # oldest GC generation (docs/performance.md).
                    del batch
                del batches
            else:
                keepalive = decode_copy_data(data)
                self.wal_end = keepalive.end
                if assembler.idle and self.pending == 0 and keepalive.end > self.acked:
                    # Nothing in flight: everything before `end` was delivered and acked.
                    if keepalive.end > self.received:
                        self.received = keepalive.end
                    if self.idle_progress:
                        self.pending += 1
                        await out.send(_progress_batch(keepalive.end))
                    else:
                        self.acked = keepalive.end
                if keepalive.reply_requested:  # type: ignore[union-attr]
                    await self.send_status()

    async def _fetch_types(self, decoder: ValueDecoder) -> None:
        assert self.meta is not None
        await fetch_types(self.meta, decoder, self.slot)

    async def _refeed(self, decoder: ValueDecoder, lsn: LSN, msg: Any) -> list[ChangeBatch]:
        """Feed ``msg`` again once the user types whose values it refused are refreshed.

        pgoutput does not announce ``ALTER TYPE``: a refused value is the sign.
        At most two refreshes (a refresh that finds nothing new backs the type
        off, see :class:`ValueDecoder`), then what is still refused is
        delivered as text: the stream never loops on a value.
        """
        assert self.assembler is not None
        for _ in range(2):
            await self._fetch_types(decoder)
            try:
                return self.assembler.feed(lsn, msg)
            except TypeRefreshNeeded:
                pass
        decoder.refresh_on_failure = False
        try:
            return self.assembler.feed(lsn, msg)
        finally:
            decoder.refresh_on_failure = True

    def acknowledge(self, lsn: LSN) -> None:
        """Record that the handler finished everything up to ``lsn`` (a commit's end)."""
        if lsn > self.acked:
            self.acked = lsn
            self._ack_event.set()

    async def send_status(self, reply: bool = False) -> None:
        """Send a standby status update: write = received, flush = apply = :attr:`acked`."""
        conn = self.repl
        assert conn is not None
        flush = self.acked
        write = max(self.received, flush)
        async with self._send_lock:
            await send_copy_data(conn, encode_standby_status(write, flush, flush, None, reply))
        self.last_status = trio.current_time()

    async def status_loop(self) -> None:
        """Send status updates every ``status_interval`` and soon after acknowledgements."""
        interval = self.status_interval
        coalesce = min(ACK_COALESCE, interval)
        while True:
            with trio.move_on_at(self.last_status + interval):
                await self._ack_event.wait()
                await trio.sleep(coalesce)
            self._ack_event = trio.Event()
            await self.send_status()

    # ------------------------------------------------------------------ closing

    async def close(self, *, final_ack: bool = True, release_timeout: float = 5.0) -> None:
        """Send a last acknowledgement (if streaming), close, wait until the slot is released.

        Waiting for the release makes ``unsubscribe`` followed by ``subscribe``
        on the same slot work at once (the walsender exits asynchronously).
        Never raises for a connection that is already broken.
        """
        try:
            await self._close(final_ack, release_timeout)
        except BaseException:
            # Cancelled (a kill during terminate) or failed: never leak a socket
            # that would keep the walsender, and so the slot, busy.
            self.abort()
            raise

    async def _close(self, final_ack: bool, release_timeout: float) -> None:
        repl, meta = self.repl, self.meta
        if repl is not None:
            if final_ack and self.streaming and repl.pgconn.status == psycopg.pq.ConnStatus.OK:
                try:
                    flush = self.acked
                    await send_copy_data(
                        repl, encode_standby_status(max(self.received, flush), flush, flush)
                    )
                except (psycopg.Error, ConnectionClosedError) as exc:
                    logger.debug("slot %s: final status update failed: %s", self.slot, exc)
            await repl.close()
            self.repl = None
        self.streaming = False
        if (
            release_timeout > 0
            and meta is not None
            and not meta.closed
            and self.backend_pid is not None
        ):
            with trio.move_on_after(release_timeout):
                try:
                    await self._wait_released(meta, self.backend_pid)
                except (psycopg.Error, ConnectionClosedError) as exc:
                    logger.debug("slot %s: cannot check the slot release: %s", self.slot, exc)
        if meta is not None:
            self.meta = None
            await meta.close()

    def abort(self) -> None:
        """Close both connections at once, synchronously, without a last acknowledgement.

        For a reader that is being killed (cancelled without ``terminate``, or
        during it): the sockets must not outlive it, or the walsender would keep the slot
        active and every restart would find it in use.
        """
        for conn in (self.repl, self.meta):
            if conn is not None:
                _hard_close(conn)
        self.repl = self.meta = None
        self.streaming = False

    async def _wait_released(self, meta: TrioConnection[Any], pid: int, cap: float = 0.05) -> None:
        delay = 0.002
        while True:
            cur = await meta.execute(
                "SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = %s "
                "UNION ALL SELECT 1 FROM pg_catalog.pg_replication_slots "
                "WHERE slot_name = %s AND active_pid = %s",
                [pid, self.slot, pid],
            )
            if await cur.fetchone() is None:
                return
            await trio.sleep(delay)
            delay = min(delay * 2, cap)


def _progress_batch(lsn: LSN) -> ChangeBatch:
    """An empty final batch that carries an idle position to the handler loop."""
    return ChangeBatch(
        [], final=True, chunk=0, xid=None, commit_lsn=lsn, end_lsn=lsn, commit_time=None
    )


def _hard_close(conn: TrioConnection[Any]) -> None:
    """Close a connection at once, synchronously, waking tasks that wait on its socket."""
    conn.close_now()
