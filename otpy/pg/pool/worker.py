"""The connection worker: one actor per pooled connection.

A worker owns one slot of the pool and the :class:`~otpy.pg.connection.TrioConnection`
in it.  Everything that costs I/O and is not a caller's query happens here,
so neither the manager nor the callers ever wait for it:

* **connecting** and **reconnecting** with the pool's back-off
  (:attr:`PoolConfig.reconnect`), reporting failures to the pool state so
  that waiters fail fast while the server is unreachable;
* **resetting** a connection returned dirty (inside a transaction, in error,
  with changed session attributes): roll back, restore the attributes, or
  replace the connection when that is impossible (busy, closed, broken);
* **health checks** of a connection idle for ``health_check_interval``,
  **replacement** after ``max_lifetime``, and, for on-demand ("ephemeral")
  workers, **closing** after ``max_idle`` (the worker then exits normally and,
  being a temporary child, is not restarted).

Connection errors never crash a worker: they are expected, counted and
retried.  A crash means a bug; the supervisor restarts the worker, and the
connection it held is closed (or, if a caller holds it, closed at check-in).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Final

import psycopg
import trio
from psycopg import pq
from psycopg.rows import tuple_row

from otpy.exit_reason import NORMAL
from otpy.gen_server import GenServer
from otpy.pg.connection import TrioConnection
from otpy.pg.pool.box import PoolBox
from otpy.pg.pool.core import Slot, SlotState

if TYPE_CHECKING:
    from psycopg.rows import TupleRow

__all__ = ["ConnectionWorker"]

logger = logging.getLogger("otpy.pg.pool")

#: Seconds allowed for a rollback/reset or a health check before the
#: connection is considered broken and replaced.
MAINTENANCE_TIMEOUT: Final = 5.0

_IDLE = pq.TransactionStatus.IDLE
_INTRANS = pq.TransactionStatus.INTRANS
_INERROR = pq.TransactionStatus.INERROR
_CONN_OK = pq.ConnStatus.OK


class _Outcome:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_REPLACE = _Outcome("replace")  # close and open a new connection
_RETIRE = _Outcome("retire")  # close and exit (ephemeral worker no longer needed)


class ConnectionWorker(GenServer):
    """Owns one connection of a pool: opens, resets, checks, replaces and closes it.

    Started by the pool's worker supervisors (``ephemeral=False`` for the
    ``min_size`` stable connections, ``True`` for on-demand ones).  ``init``
    only registers the slot; the connection is opened by a background task,
    so starting a pool never blocks on the server and a pool starts even
    while the server is down.
    """

    def __init__(self, box: PoolBox, ephemeral: bool = False) -> None:
        self._box = box
        self.ephemeral = ephemeral
        self._wake = trio.Event()
        self._maintenance = False

    def __repr__(self) -> str:
        kind = "ephemeral" if self.ephemeral else "stable"
        return f"<ConnectionWorker {self._box.name!r} {kind}>"

    async def init(self) -> None:
        """Register a slot with the pool's current state and start connecting."""
        core = self._box.core
        if core is None:
            raise RuntimeError(f"pool {self._box.name!r} has no running manager")
        self.core = core
        self.slot: Slot = core.add_slot(self, self.ephemeral)
        self.start_soon(self._main, name=f"pool {self._box.name!r} connection")

    def request_maintenance(self) -> None:
        """Called (synchronously) by a check-in of a dirty connection: wake the worker."""
        self._maintenance = True
        self._wake.set()

    # -- the worker's life --------------------------------------------------------

    async def _main(self) -> None:
        core, slot = self.core, self.slot
        conn: TrioConnection[TupleRow] | None = None
        try:
            while True:
                conn = await self._connect()
                if conn is None:
                    break
                core.connected(slot, conn)
                result = await self._serve(conn)
                if result is _RETIRE:
                    break
                core.disconnected(slot)
                old, conn = conn, None
                await old.close()
        finally:
            owns = core.remove_slot(slot)
            if conn is not None and owns:
                await conn.close()
        self.stop(NORMAL)

    async def _connect(self) -> TrioConnection[TupleRow] | None:
        """Open a connection, retrying with back-off; None if no longer wanted."""
        core = self.core
        backoff = core.config.reconnect
        kwargs = core.database.connect_kwargs(autocommit=True)
        attempt = 0
        while True:
            attempt += 1  # Backoff counts from 1
            try:
                return await TrioConnection.connect(**kwargs)
            except (psycopg.Error, OSError) as exc:
                message = " ".join(str(exc).split()) or type(exc).__name__
                core.connect_failed(self.slot, message)
                delay = backoff.delay(attempt)
                logger.warning(
                    "pool %r: cannot connect to %s (attempt %d, retrying in %.2f s): %s",
                    core.name,
                    core.database.describe(),
                    attempt,
                    delay,
                    message,
                    extra={"event": "pool_connect_failed", "pool": core.name},
                )
                if self.ephemeral and not core.waiters:
                    return None
                await trio.sleep(delay)

    async def _serve(self, conn: TrioConnection[TupleRow]) -> _Outcome:
        """Look after an open connection until it must be replaced or retired."""
        core, slot = self.core, self.slot
        while True:
            if self._maintenance:
                self._maintenance = False
                if slot.state is not SlotState.BUSY:
                    continue
                if await self._reset(conn):
                    core.restored(slot)
                    continue
                return _RETIRE if slot.ephemeral and not core.waiters else _REPLACE
            now = trio.current_time()
            if slot.state is not SlotState.IDLE and now >= slot.expires_at:
                slot.expired = True  # replaced when it comes back (checked at check-in)
            deadline = self._next_deadline(now)
            if deadline > now:
                with trio.move_on_at(deadline):
                    await self._wake.wait()
                if self._wake.is_set():
                    self._wake = trio.Event()
                continue
            result = await self._housekeeping(conn, now)
            if result is not None:
                return result

    def _next_deadline(self, now: float) -> float:
        slot, config = self.slot, self.core.config
        interval = config.health_check_interval
        if slot.state is SlotState.IDLE:
            deadline = slot.expires_at
            if interval is not None:
                deadline = min(deadline, max(slot.idle_since, slot.checked_at) + interval)
            return min(deadline, slot.idle_since + slot.max_idle)
        # In use or busy: look again later (a dirty check-in wakes us earlier).
        recheck = interval if interval is not None else 60.0
        if slot.max_idle != math.inf:
            recheck = min(recheck, slot.max_idle)
        if slot.expired:
            return now + recheck
        return min(now + recheck, slot.expires_at)

    async def _housekeeping(self, conn: TrioConnection[TupleRow], now: float) -> _Outcome | None:
        core, slot = self.core, self.slot
        if slot.state is not SlotState.IDLE:
            return None
        if now >= slot.idle_since + slot.max_idle and core.take_idle(slot):
            core.connections_closed_idle += 1
            return _RETIRE
        if now >= slot.expires_at and core.take_idle(slot):
            core.connections_replaced += 1
            return _RETIRE if slot.ephemeral else _REPLACE
        interval = core.config.health_check_interval
        if (
            interval is not None
            and now >= max(slot.idle_since, slot.checked_at) + interval
            and core.take_idle(slot)
        ):
            core.health_checks += 1
            healthy = await self._health_check(conn)
            slot.checked_at = trio.current_time()
            if healthy:
                core.restored(slot, keep_idle_since=True)
                return None
            core.connections_lost += 1
            return _REPLACE
        return None

    async def _health_check(self, conn: TrioConnection[TupleRow]) -> bool:
        if conn.closed or conn.pgconn.status != _CONN_OK:
            return False
        with trio.move_on_after(MAINTENANCE_TIMEOUT):
            try:
                await conn.execute("SELECT 1")
            except psycopg.Error as exc:
                logger.info(
                    "pool %r: health check failed, replacing the connection: %s",
                    self.core.name,
                    exc,
                    extra={"event": "pool_health_check_failed", "pool": self.core.name},
                )
                return False
            return conn.pgconn.transaction_status == _IDLE
        return False

    async def _reset(self, conn: TrioConnection[TupleRow]) -> bool:
        """Bring a returned connection back to the pool's clean state; False: replace it."""
        core, slot = self.core, self.slot
        if slot.reclaim:
            slot.reclaim = False
            core.connections_replaced += 1
            return False
        pgconn = conn.pgconn
        if conn.closed or pgconn.status != _CONN_OK:
            core.connections_lost += 1
            return False
        if slot.expired or trio.current_time() >= slot.expires_at:
            core.connections_replaced += 1
            return False
        status = pgconn.transaction_status
        if status not in (_IDLE, _INTRANS, _INERROR):
            # ACTIVE: results or a COPY still pending; UNKNOWN: broken.  Rather
            # than guess how to drain it, replace it.
            core.connections_replaced += 1
            return False
        with trio.move_on_after(MAINTENANCE_TIMEOUT):
            try:
                if status != _IDLE:
                    await conn.rollback()
                    core.rollbacks += 1
                if not conn.autocommit:
                    await conn.set_autocommit(True)
                if conn.isolation_level is not None:
                    await conn.set_isolation_level(None)
                if conn.read_only is not None:
                    await conn.set_read_only(None)
                if conn.deferrable is not None:
                    await conn.set_deferrable(None)
                conn.row_factory = tuple_row
            except psycopg.Error as exc:
                logger.info(
                    "pool %r: cannot reset a returned connection, replacing it: %s",
                    core.name,
                    exc,
                    extra={"event": "pool_reset_failed", "pool": core.name},
                )
                core.connections_lost += 1
                return False
            return pgconn.transaction_status == _IDLE
        core.connections_lost += 1
        return False

    async def terminate(self, reason: Any) -> None:
        """Nothing to do here: the background task's ``finally`` closes the connection.

        It runs on every exit, including kills that skip ``terminate``.
        """
