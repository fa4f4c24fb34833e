"""Exactly-once into a PostgreSQL target: the writes and the source position commit together.

A WAL reader delivers each transaction at least once: after a crash, the
unacknowledged tail comes again.  When the handler writes into PostgreSQL
through an otpy pool, the duplicates can be removed for good by committing
the *source position* in the same target transaction as the writes, and by
skipping, on redelivery, what is at or below the stored position::

    class CopyUsers(ExactlyOnceHandler):
        async def apply(self, conn, changes):
            for change in changes:
                ...  # conn.execute(...): inside the target transaction

    await wal_reader.subscribe(CopyUsers(pool="target", origin="myapp_users"),
                               source_db, "myapp_users", ["users_pub"],
                               {"slot_type": "persistent"})

Design choices, and why:

* **The position is a row, committed with the writes.**  Each applied
  transaction updates its origin's row in a progress table
  (``otpy_exactly_once_progress`` by default: ``origin``, ``position``) in
  the same target transaction as the writes, so writes and position commit
  or abort together, whatever fails: a deferred constraint refusing the
  COMMIT, a backend terminated before it committed, the applier process
  dying at any instant.  The row is locked (``SELECT ... FOR UPDATE``) when
  the target transaction begins and the skip decision is taken again under
  that lock, so a transaction whose outcome this process never learnt
  (its COMMIT's answer was lost) is seen committed or not before anything
  is applied twice.
* **Replication origins tag the writes, they do not store the position.**
  The target session is bound to a replication origin
  (``pg_replication_origin_session_setup``), so its commits carry the
  origin: pgoutput sends an Origin message for them (loop prevention,
  PostgreSQL 16's ``origin = none``), and an origin admits one writing
  session at a time, a single-writer lock for free: a second applier fails
  (:class:`OriginInUse`) instead of interleaving.  The origin's own progress
  (``pg_replication_origin_xact_setup``) was the stored position until it
  proved unsound: on PostgreSQL 18 an ABORT record carries it too and
  advances the origin, so a target transaction that failed at COMMIT made
  its source transaction look applied.  That could only be settled in the
  memory of the process that saw the failure; a transactional row needs no
  settling.  A position stored by an earlier otpy in the origin seeds the
  row the first time.  Cost: ``pg_replication_origin_*`` functions are for
  superusers unless granted (``GRANT EXECUTE ON FUNCTION
  pg_replication_origin_session_setup(text) TO app`` and likewise for
  ``pg_replication_origin_create(text)``, ``_oid(text)``,
  ``_progress(text, boolean)``, ``_session_reset()``), and the applier role
  needs the progress table (created when missing, or by an administrator:
  ``docs/delivery.md`` has the DDL).
* **The stored position is the source commit's end LSN**, as the reader
  acknowledges it; a batch is already applied when its ``commit_lsn`` is
  below the stored position (a later transaction's commit record starts at or
  after an earlier one's end).  A non-transactional message at ``L`` stores
  ``L + 1``, so it too is skipped on redelivery.
* **Chunks of one large transaction run in one target transaction**, held
  open (on one pooled connection) from chunk 0 to the final chunk, and the
  position commits with the final chunk.  The reader redelivers a failed
  transaction from chunk 0, so a crash anywhere in between rolls the target
  back to a state where that is right.  Memory stays bounded by
  ``max_batch_size`` in this process; the server holds the open transaction
  (as PostgreSQL's own apply does with ``streaming``).
* **The slot never runs ahead of the stored position.**  The reader also
  acknowledges positions the handler never saw (idle keepalives, empty
  transactions); a handler with ``handle_replication_progress`` gets them
  first and records them (at most once per ``progress_interval``, so that
  idle progress does not write a transaction per keepalive).  Hence at start
  ``slot confirmed_flush_lsn <= stored position`` always holds for a healthy
  pair; when it does not, the slot was recreated or acknowledged changes
  that never reached the target, and :meth:`ExactlyOnce.check_start` says so
  (:class:`PositionMismatch`) instead of leaving a silent gap.  A slot
  *behind* the stored position only means redelivered duplicates, which are
  skipped.

Target transactions run with at least ``synchronous_commit = local`` (``off``
is raised to ``local``): an acknowledged source position must never outlive
its target commit in a crash of the target.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import psycopg
import trio
from psycopg import errors as pg_errors
from psycopg import sql

from otpy.pg.pool import Lease, Pool, PoolError, acquire
from otpy.pg.replication.changes import ChangeBatch
from otpy.pg.replication.errors import ChangesLost, InvalidHandler, ReplicationError
from otpy.pg.replication.handler import ReplicationHandler
from otpy.pg.replication.lsn import LSN
from otpy.pg.wal_reader.dead_letters import DeadLetter

if TYPE_CHECKING:
    from psycopg.rows import TupleRow

    from otpy.pg.connection import TrioConnection

__all__ = [
    "DEFAULT_PROGRESS_TABLE",
    "MISMATCH_STRATEGIES",
    "ExactlyOnce",
    "ExactlyOnceError",
    "ExactlyOnceHandler",
    "OriginInUse",
    "PositionMismatch",
]

logger = logging.getLogger("otpy.pg.exactly_once")

#: What :meth:`ExactlyOnce.check_start` does when the slot is ahead of the target:
#: ``"fail"`` raises :class:`PositionMismatch` (the default: resynchronise, then
#: reset); ``"trust_slot"`` logs an error, accepts the gap and stores the
#: slot's position (for targets that are resynchronised by other means).
MISMATCH_STRATEGIES = ("fail", "trust_slot")

DEFAULT_PROGRESS_TABLE = "otpy_exactly_once_progress"
"""Where positions are stored in the target unless ``progress_table`` names another table."""

_ENSURE_ORIGIN = (
    "SELECT pg_catalog.pg_replication_origin_create(%(o)s) "
    "WHERE pg_catalog.pg_replication_origin_oid(%(o)s) IS NULL"
)
_CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS {} (origin text PRIMARY KEY, position pg_lsn NOT NULL, "
    "updated_at timestamptz NOT NULL DEFAULT now())"
)
# The first time: a position stored by an earlier otpy in the origin itself.
_SEED = (
    "INSERT INTO {} (origin, position) SELECT %(o)s, coalesce("
    "pg_catalog.pg_replication_origin_progress(%(o)s, true), '0/0') ON CONFLICT DO NOTHING"
)
_POSITION = "SELECT position::text FROM {} WHERE origin = %(o)s"
_FORGET = "DELETE FROM {} WHERE origin = %(o)s"
# COMMIT with at least ``synchronous_commit = local``: ``off`` would let a target
# crash lose a commit whose source position was already acknowledged.
_SYNC_COMMIT = (
    "SELECT pg_catalog.set_config('synchronous_commit', CASE "
    "pg_catalog.current_setting('synchronous_commit') WHEN 'off' THEN 'local' "
    "ELSE pg_catalog.current_setting('synchronous_commit') END, true); COMMIT"
)
_COMMIT = sql.SQL(_SYNC_COMMIT)
_DROP_ORIGIN = (
    "SELECT pg_catalog.pg_replication_origin_drop(%(o)s) "
    "WHERE pg_catalog.pg_replication_origin_oid(%(o)s) IS NOT NULL"
)
# One message: BEGIN, bind the origin (tags the writes, one writer), and lock the
# position row: the skip decision is taken again under this lock.
_BEGIN = sql.SQL("BEGIN; SELECT pg_catalog.pg_replication_origin_session_setup({o}); {lock}")
_LOCK_POSITION = sql.SQL("SELECT position::text FROM {t} WHERE origin = {o} FOR UPDATE")
# A replayed dead letter: claimed by its row, in the transaction that applies it.
_CLAIM_REPLAY = sql.SQL(
    "INSERT INTO {t} (origin, commit_lsn) VALUES ({o}, {lsn}::pg_lsn) "
    "ON CONFLICT DO NOTHING RETURNING 1"
)
_CREATE_REPLAYED = (
    "CREATE TABLE IF NOT EXISTS {} (origin text, commit_lsn pg_lsn, "
    "replayed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (origin, commit_lsn))"
)
_RESET = "SELECT pg_catalog.pg_replication_origin_session_reset()"
# One message: store the position and COMMIT (a round trip saved).
# An upsert, not an UPDATE: a row deleted under a running applier (forget() misused)
# is written again rather than silently not stored.
_COMMIT_POSITION = sql.SQL(
    "INSERT INTO {t} AS p (origin, position) VALUES ({o}, {lsn}::pg_lsn) "
    "ON CONFLICT (origin) DO UPDATE SET position = greatest(p.position, EXCLUDED.position), "
    "updated_at = now(); " + _SYNC_COMMIT
)


class ExactlyOnceError(ReplicationError):
    """A misuse of the exactly-once path (what was wrong and what to do is in the message)."""


class OriginInUse(ExactlyOnceError):
    """Another session holds the replication origin: two appliers for one origin.

    Each origin admits one writing session at a time, which is what keeps
    two appliers from interleaving.  Run one subscription per origin (the
    reader restarts and tries again); if a crashed process still holds it,
    it is released when that backend ends.
    """

    def __init__(self, origin: str, detail: str) -> None:
        super().__init__(
            f"replication origin {origin!r} is in use by another session ({detail}): "
            f"one applier per origin; the reader will retry"
        )
        self.origin = origin


class PositionMismatch(ChangesLost):
    """Terminal: the slot is ahead of the target's stored position at start.

    The slot's ``confirmed_flush_lsn`` is beyond the position stored in the
    target, so changes in between were acknowledged without being applied:
    the slot was dropped and recreated, another consumer read it, or the
    target was restored from an older backup.  They cannot be streamed
    again.  What to do: resynchronise the target from the source tables,
    then either start fresh (:meth:`ExactlyOnce.forget`, or ``DELETE FROM
    otpy_exactly_once_progress WHERE origin = ...`` on the target) or start
    once with ``on_mismatch="trust_slot"``.

    Attributes:
        origin: the target's replication origin (the key of its progress row).
        stored: the position stored in the target.
        confirmed: the slot's confirmed flush position.
    """

    def __init__(
        self,
        slot: str,
        origin: str,
        stored: LSN,
        confirmed: LSN,
        table: str = DEFAULT_PROGRESS_TABLE,
    ) -> None:
        super().__init__(
            slot,
            f"slot {slot!r} starts at {confirmed} but the target (origin {origin!r}) "
            f"applied up to {stored} only: changes between were acknowledged "
            f"without being applied (slot recreated, read by someone else, or target "
            f"restored). Resynchronise the target, then delete its row "
            f"(DELETE FROM {table} WHERE origin = {_quoted(origin)}) or start once "
            f"with on_mismatch='trust_slot'",
        )
        self.origin = origin
        self.stored = stored
        self.confirmed = confirmed


def _quoted(text: str) -> str:
    """``text`` as an SQL string literal, for a statement shown in a message."""
    return "'" + text.replace("'", "''") + "'"


def _is_message(batch: ChangeBatch) -> bool:
    """A non-transactional logical message: delivered alone, at its own LSN."""
    return batch.xid is None and batch.commit_time is None and batch.commit_lsn == batch.end_lsn


class ExactlyOnce:
    """Applies source transactions into a target pool exactly once, tagged with an origin.

    One instance per subscription (its handler keeps it across the reader's
    restarts).  Use :meth:`transaction` for every batch the handler receives
    (also the ones it ignores: the position must move with the slot), or
    subclass :class:`ExactlyOnceHandler`, which does all of it.

    Args:
        pool: the target pool (a name or a :class:`~otpy.pg.pool.Pool`).
        origin: the replication origin in the target (created when missing);
            one per subscription, e.g. the slot name.  It also keys the row
            of the progress table that holds the stored position.
        on_mismatch: see :data:`MISMATCH_STRATEGIES`.
        skip_replicated: skip source transactions that a replication origin
            wrote (``batch.origin`` set), i.e. that were themselves
            replicated: the client-side ``origin = none`` that stops loops in
            two-way sync on PostgreSQL < 16.
        progress_interval: seconds between two records of idle positions.
        progress_table: the target table of stored positions, ``"table"`` or
            ``"schema.table"`` (created when missing; see :data:`DEFAULT_PROGRESS_TABLE`).
    """

    def __init__(
        self,
        pool: str | Pool,
        origin: str,
        *,
        on_mismatch: str = "fail",
        skip_replicated: bool = False,
        progress_interval: float = 1.0,
        progress_table: str = DEFAULT_PROGRESS_TABLE,
    ) -> None:
        if not isinstance(origin, str) or not origin or len(origin) > 512:
            raise ExactlyOnceError(f"origin: expected a non-empty name, got {origin!r}")
        if on_mismatch not in MISMATCH_STRATEGIES:
            raise ExactlyOnceError(
                f"on_mismatch: expected one of {', '.join(map(repr, MISMATCH_STRATEGIES))}, "
                f"got {on_mismatch!r}"
            )
        if not isinstance(skip_replicated, bool):
            raise ExactlyOnceError(
                f"skip_replicated: expected True or False, got {skip_replicated!r}"
            )
        if (
            isinstance(progress_interval, bool)
            or not isinstance(progress_interval, int | float)
            or not math.isfinite(progress_interval)
            or progress_interval < 0
        ):
            raise ExactlyOnceError(
                f"progress_interval: expected finite seconds >= 0, got {progress_interval!r}"
            )
        self.pool = pool
        self.origin = origin
        self.on_mismatch = on_mismatch
        self.skip_replicated = skip_replicated
        self.progress_interval = float(progress_interval)
        self.progress_table = progress_table
        self._table = _table_name(progress_table)
        self._replayed = _table_name(progress_table + "_replayed")
        self._replayed_ensured = False
        #: Source transactions applied / skipped as already applied / skipped as replicated.
        self.applied = 0
        self.duplicates = 0
        self.replicated = 0
        # The stored position as last read or committed (never ahead of the row);
        # None = read it again (after any error, whose commit outcome may be unknown).
        self._stored: LSN | None = None
        self._ensured = False
        # The target transaction held open across the chunks of a large source one.
        self._open: Lease | None = None
        self._open_key: tuple[LSN, int] = (LSN(0), -1)
        self._last_progress = -math.inf

    def __repr__(self) -> str:
        return f"<ExactlyOnce origin={self.origin!r} pool={self.pool!r}>"

    # ------------------------------------------------------------------ position

    async def position(self) -> LSN | None:
        """The source position stored in the target (end of the last applied commit), or None.

        None means nothing was ever applied under this origin (a fresh target).
        A target transaction still committing is not waited for: what it
        stores is seen (under the row lock) before anything is applied again.
        """
        lease = await acquire(self.pool)
        try:
            conn = lease.connection
            await self._ensure(conn)
            cur = await conn.execute(sql.SQL(_POSITION).format(self._table), {"o": self.origin})
            row = await cur.fetchone()
            return _position(row)
        finally:
            await lease.release()

    async def check_start(self, slot: str, confirmed: LSN) -> None:
        """Compare the slot's confirmed position with the stored one before streaming.

        A slot at or behind the stored position is fine (behind: the
        transactions in between arrive again and are skipped).  A slot ahead
        of it lost changes for this target: :class:`PositionMismatch`, or
        with ``on_mismatch="trust_slot"`` an error log and the slot's
        position stored.  A fresh target (no stored position) starts where
        the slot is.

        Raises:
            PositionMismatch: the slot is ahead and ``on_mismatch`` is ``"fail"``.
        """
        stored = await self.position()
        self._stored = stored
        if stored is None or confirmed <= stored:
            if stored is not None and confirmed < stored:
                logger.info(
                    "slot %s starts at %s, before the target's position %s: "
                    "transactions in between are skipped as already applied",
                    slot,
                    confirmed,
                    stored,
                    extra={"event": "exactly_once_replay", "slot": slot, "origin": self.origin},
                )
            return
        error = PositionMismatch(slot, self.origin, stored, confirmed, self.progress_table)
        if self.on_mismatch == "fail":
            raise error
        logger.error(
            "%s; continuing as on_mismatch='trust_slot' asks",
            error,
            extra={"event": "exactly_once_mismatch", "slot": slot, "origin": self.origin},
        )
        await self._record(confirmed)

    def is_applied(self, batch: ChangeBatch) -> bool:
        """Whether ``batch`` is at or below the stored position (known since the last read)."""
        return self._stored is not None and batch.commit_lsn < self._stored

    # ------------------------------------------------------------------ applying

    @contextlib.asynccontextmanager
    async def transaction(
        self, batch: ChangeBatch
    ) -> AsyncIterator[TrioConnection[TupleRow] | None]:
        """Apply ``batch`` in a target transaction that also stores its source position.

        Yields the target connection, inside the transaction, tagged with the
        origin; or None when the batch must not be applied: it was applied
        before a crash (a duplicate), or it was replicated and
        ``skip_replicated`` is on (its position is still recorded).  On leaving
        the block after the final batch of a transaction, the writes and the
        position commit together; after a non-final chunk the transaction stays
        open for the next chunk.  An exception rolls everything back (and
        propagates: the reader redelivers from chunk 0).

        Raises:
            OriginInUse: another session holds the origin.
            ExactlyOnceError: a chunk arrived out of sequence.
        """
        if batch.chunk == 0 and self._open is not None:
            # A stale open transaction from a delivery that did not finish.
            await self.abort()
        if self._stored is None:
            self._stored = await self.position()
        if self.skip_replicated and batch.origin is not None and not self.is_applied(batch):
            self.replicated += batch.final
            if batch.final:
                await self._record(self._end(batch))
            yield None
            return
        if self.is_applied(batch):
            self.duplicates += batch.final
            yield None
            return
        lease = self._open
        key = (batch.commit_lsn, batch.chunk)
        if batch.chunk > 0:
            if lease is None or self._open_key != (batch.commit_lsn, batch.chunk - 1):
                await self.abort()
                raise ExactlyOnceError(
                    f"chunk {batch.chunk} of the transaction committed at {batch.commit_lsn} "
                    f"arrived without its previous chunks: deliver every batch through "
                    f"transaction(), in order"
                )
        else:
            lease = await self._begin()
            if self.is_applied(batch):
                # Under the row lock: a commit whose answer this process never
                # got (or another applier's) stored it after all.
                await _give_back(lease, self.origin)
                self.duplicates += batch.final
                yield None
                return
        self._open = None
        try:
            conn = lease.connection
            yield conn
            if batch.final:
                end = self._end(batch)
                await self._commit_at(conn, end)
                self._stored = end
                self.applied += 1
        except BaseException:
            self._stored = None
            await _give_back(lease, self.origin)
            raise
        if batch.final:
            await _give_back(lease, self.origin)
        else:
            self._open, self._open_key = lease, key

    @contextlib.asynccontextmanager
    async def replayed(self, batch: ChangeBatch) -> AsyncIterator[TrioConnection[TupleRow] | None]:
        """Apply a parked transaction (a dead letter's batch) once, in a target transaction.

        The stream's position is already past a parked transaction (the reader
        acknowledged it when it parked it), so :meth:`transaction` would skip
        it as applied.  Instead, the replay claims the transaction's row in
        ``<progress_table>_replayed`` (origin, commit LSN) in the same target
        transaction as the writes: a replay that committed but whose dead
        letter was not removed (a crash in between) yields None when it is
        replayed again.  The writes are tagged with the origin, like all
        writes of this path.

        Raises:
            OriginInUse: another session holds the origin.
        """
        claim = _CLAIM_REPLAY.format(
            t=self._replayed, o=sql.Literal(self.origin), lsn=sql.Literal(str(batch.commit_lsn))
        )
        lease, row = await self._begin_with(claim, replaying=True)
        if row is None:
            await _give_back(lease, self.origin)
            self.duplicates += 1
            yield None
            return
        try:
            conn = lease.connection
            yield conn
            await conn.execute(_COMMIT)
            self.applied += 1
        finally:
            await _give_back(lease, self.origin)

    async def _ensure_replayed(self, conn: TrioConnection[TupleRow]) -> None:
        """Create ``<progress_table>_replayed`` once, if missing (only replays need it)."""
        if self._replayed_ensured:
            return
        await _create_table(
            conn, _CREATE_REPLAYED, self._replayed, self.progress_table + "_replayed"
        )
        self._replayed_ensured = True

    async def record(self, lsn: LSN) -> bool:
        """Store ``lsn`` (a position the reader acknowledges without a batch) if it is time.

        The reader's ``handle_replication_progress`` hook: returns True once
        ``lsn`` is stored (the reader may acknowledge it), False when the last
        record is more recent than ``progress_interval`` (the reader offers a
        later position again).
        """
        if self._open is not None:
            return False
        if self._stored is None:
            self._stored = await self.position()
        if self._stored is not None and lsn <= self._stored:
            return True
        now = trio.current_time()
        if now - self._last_progress < self.progress_interval:
            return False
        await self._record(lsn)
        self._last_progress = now
        return True

    async def abort(self) -> None:
        """Roll back the target transaction left open by an unfinished large transaction.

        Called by :class:`ExactlyOnceHandler` when the stream stops; harmless
        when nothing is open.
        """
        lease, self._open = self._open, None
        if lease is not None:
            self._stored = None
            await _give_back(lease, self.origin)

    async def forget(self) -> None:
        """Delete the stored position and drop the origin in the target: a fresh start.

        For retiring a pipeline (an origin holds one of the target's
        ``max_active_replication_origins``), or for starting over after the
        target was resynchronised following a :class:`PositionMismatch`.
        Call it while no reader delivers to this instance.
        """
        await self.abort()
        lease = await acquire(self.pool)
        try:
            conn = lease.connection
            for table in (self._table, self._replayed):
                with contextlib.suppress(pg_errors.UndefinedTable):
                    await conn.execute(sql.SQL(_FORGET).format(table), {"o": self.origin})
            await conn.execute(_DROP_ORIGIN, {"o": self.origin})
        finally:
            await lease.release()
        self._ensured = self._replayed_ensured = False
        self._stored = None

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _end(batch: ChangeBatch) -> LSN:
        """The position that marks ``batch`` applied (see the module docstring)."""
        return LSN(batch.end_lsn + 1) if _is_message(batch) else batch.end_lsn

    async def _ensure(self, conn: TrioConnection[TupleRow]) -> None:
        """Create the origin, the progress table and the origin's row once, if missing.

        Concurrent creations by two processes are fine (the loser's
        ``UniqueViolation`` is ignored).

        Raises:
            ExactlyOnceError: the role may not use replication origins, or not
                create the progress table.
        """
        if self._ensured:
            return
        try:
            with contextlib.suppress(pg_errors.UniqueViolation):
                await conn.execute(_ENSURE_ORIGIN, {"o": self.origin})
        except pg_errors.InsufficientPrivilege as exc:
            raise ExactlyOnceError(
                f"replication origin {self.origin!r}: the role may not use replication "
                f"origins ({exc.diag.message_primary}); a superuser grants EXECUTE on the "
                f"pg_replication_origin_* functions (docs/delivery.md, 'Privileges')"
            ) from None
        await _create_table(conn, _CREATE_TABLE, self._table, self.progress_table)
        await conn.execute(sql.SQL(_SEED).format(self._table), {"o": self.origin})
        self._ensured = True

    async def _begin(self) -> Lease:
        """A leased connection inside BEGIN, bound to the origin, its position row locked.

        ``self._stored`` is refreshed from the locked row: the skip decision
        is taken again against it.
        """
        lock = _LOCK_POSITION.format(o=sql.Literal(self.origin), t=self._table)
        lease, row = await self._begin_with(lock)
        self._stored = _position(row)
        return lease

    async def _begin_with(
        self, statement: sql.Composable, *, replaying: bool = False
    ) -> tuple[Lease, Any]:
        """A leased connection inside BEGIN, bound to the origin, and the row ``statement`` gave.

        BEGIN, the origin set-up and ``statement`` go in one message.  With
        ``replaying``, the replays' table is made sure of first, on the same
        connection.

        Raises:
            OriginInUse: another session holds the origin.
        """
        lease = await acquire(self.pool)
        try:
            conn = lease.connection
            await self._ensure(conn)
            if replaying:
                await self._ensure_replayed(conn)
            try:
                cur = await conn.execute(_BEGIN.format(o=sql.Literal(self.origin), lock=statement))
            except pg_errors.ObjectInUse as exc:
                raise OriginInUse(self.origin, exc.diag.message_primary or str(exc)) from None
            while cur.nextset():  # BEGIN, the origin set-up, then the statement's row
                pass
            row = await cur.fetchone()
        except BaseException:
            self._stored = None
            await _give_back(lease, self.origin)
            raise
        return lease, row

    async def _commit_at(self, conn: TrioConnection[TupleRow], lsn: LSN) -> None:
        """Store ``lsn`` in the locked row and COMMIT, in one message (one round trip)."""
        literal = sql.Literal(str(lsn))
        await conn.execute(
            _COMMIT_POSITION.format(t=self._table, lsn=literal, o=sql.Literal(self.origin))
        )

    async def _record(self, lsn: LSN) -> None:
        """Store ``lsn`` in a transaction of its own (no writes: only the position)."""
        lease = await self._begin()
        try:
            await self._commit_at(lease.connection, lsn)
        except BaseException:
            self._stored = None
            await _give_back(lease, self.origin)
            raise
        # The row never moves back (greatest()): neither does the cache.
        self._stored = lsn if self._stored is None else max(self._stored, lsn)
        await _give_back(lease, self.origin)


async def _create_table(
    conn: TrioConnection[TupleRow], statement: str, table: sql.Identifier, name: str
) -> None:
    """Run ``CREATE TABLE IF NOT EXISTS`` (``statement``) for ``table``, racing others fine.

    Raises:
        ExactlyOnceError: the role may not create it (what to do instead is said).
    """
    try:
        with contextlib.suppress(pg_errors.UniqueViolation):  # created concurrently
            await conn.execute(sql.SQL(statement).format(table))
    except pg_errors.InsufficientPrivilege as exc:
        raise ExactlyOnceError(
            f"table {name!r}: the role may not create it ({exc.diag.message_primary}); "
            f"create it once as its owner (docs/delivery.md, 'Privileges') or name "
            f"another with progress_table="
        ) from None


def _table_name(name: str) -> sql.Identifier:
    """``"table"`` or ``"schema.table"`` as an identifier, refusing anything else."""
    parts = name.split(".") if isinstance(name, str) else []
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ExactlyOnceError(f"progress_table: expected 'table' or 'schema.table', got {name!r}")
    return sql.Identifier(*parts)


def _position(row: Any) -> LSN | None:
    """A stored position from its row; None for no row or ``0/0`` (nothing applied yet)."""
    if row is None or row[0] is None:
        return None
    return LSN.parse(row[0]) or None


async def _give_back(lease: Lease, origin: str) -> None:
    """Roll back what is open, unbind the origin and return the connection.

    A connection that cannot be cleaned (broken, cancelled) is closed, so the
    pool replaces it: a pooled connection must never keep the origin (its
    next user's writes would be tagged, and the origin held).
    """
    try:
        conn = lease.connection
    except PoolError:  # pragma: no cover - released already
        return
    try:
        with trio.CancelScope(shield=True):
            try:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    await conn.execute("ROLLBACK")
                await conn.execute(_RESET)
            except (psycopg.Error, OSError):
                await conn.close()
            except BaseException:
                await conn.close()
                raise
    finally:
        with trio.CancelScope(shield=True):
            await lease.release()


class ExactlyOnceHandler(ReplicationHandler):
    """A replication handler that applies each source transaction exactly once into a pool.

    Subclass it and implement :meth:`apply`; everything else (skipping
    duplicates and, with ``skip_replicated``, replicated transactions,
    recording idle positions, checking the slot at start, rolling back an
    unfinished large transaction when the stream stops) is done here.  The
    arguments are those of :class:`ExactlyOnce`, available as
    its ``exactly_once`` attribute.  Needs a *persistent* slot: a temporary one loses
    changes on every restart, which the start check reports.
    """

    def __init__(
        self,
        pool: str | Pool,
        origin: str,
        *,
        on_mismatch: str = "fail",
        skip_replicated: bool = False,
        progress_interval: float = 1.0,
        progress_table: str = DEFAULT_PROGRESS_TABLE,
    ) -> None:
        if type(self).apply is ExactlyOnceHandler.apply:
            raise InvalidHandler(
                f"{type(self).__qualname__} does not implement "
                f"apply(self, conn, changes) (misspelled?): define it as async def"
            )
        self.exactly_once = ExactlyOnce(
            pool,
            origin,
            on_mismatch=on_mismatch,
            skip_replicated=skip_replicated,
            progress_interval=progress_interval,
            progress_table=progress_table,
        )

    async def apply(self, conn: TrioConnection[TupleRow], changes: ChangeBatch) -> None:
        """Write ``changes`` through ``conn``, inside the target transaction; do not commit.

        Called once per batch to apply (never for a duplicate).  Raising
        rolls the target back; the reader redelivers the transaction.
        """
        raise NotImplementedError

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        """Apply ``changes`` through :meth:`apply`, unless they were applied already.

        A dead letter being replayed (``ref`` is a
        :class:`~otpy.pg.wal_reader.dead_letters.DeadLetter`) goes through
        :meth:`ExactlyOnce.replayed`: the stream's position is past it.
        """
        eo = self.exactly_once
        opened = eo.replayed(changes) if isinstance(ref, DeadLetter) else eo.transaction(changes)
        async with opened as conn:
            if conn is not None:
                await self.apply(conn, changes)

    async def handle_replication_progress(self, ref: Any, lsn: LSN) -> bool:
        """Record a position acknowledged without a batch (:meth:`ExactlyOnce.record`)."""
        return await self.exactly_once.record(lsn)

    async def check_replication_start(self, ref: Any, confirmed: LSN) -> None:
        """Refuse to stream from a slot ahead of the target (:meth:`ExactlyOnce.check_start`).

        Raises:
            ExactlyOnceError: the slot is temporary (it loses changes on every restart).
            PositionMismatch: see :meth:`ExactlyOnce.check_start`.
        """
        options = getattr(ref, "options", None)
        if options is not None and options.temporary:
            raise ExactlyOnceError(
                f"slot {ref.slot!r}: exactly-once needs a persistent slot (a temporary "
                f"one loses what is committed while the reader restarts); subscribe "
                f"with slot_type='persistent'"
            )
        await self.exactly_once.check_start(ref.slot, confirmed)

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        """Roll back the target transaction of an unfinished large transaction, if any."""
        await self.exactly_once.abort()
