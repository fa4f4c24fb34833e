"""The state of one pool, and the synchronous checkout/checkin fast path.

A :class:`PoolCore` is owned by the pool's manager actor (it is created in the
manager's ``init`` and closed when the manager exits), but its checkout and
checkin methods run in the *caller's* task.  trio runs one task at a time and
switches only at ``await``: a method without ``await`` is atomic, exactly like
a message handled by an actor, without the two task switches of a message
round trip.  That is what makes the hot path cheap:

* ``checkout_nowait``: an idle connection and nobody waiting -> pop it (no
  await, no message, no I/O);
* ``checkin``: the connection is clean (checked *locally*: libpq's transaction
  status and psycopg's session attributes) -> hand it straight to the first
  waiter or put it back on the idle stack.  A dirty or broken connection goes
  to its worker, which rolls it back or replaces it *outside* the caller's
  task and outside the manager;
* ``checkout``: nothing idle -> queue a waiter (FIFO) and park the task.  A
  waiter leaves the queue atomically when it is cancelled or expires
  (``wait_task_rescheduled``'s abort callback; the pool's
  :class:`~otpy._deadlines.Deadlines` queue, one timer task for all the
  waiters' deadlines), so a connection is never handed to a caller that gave up.

Waiters are served by :meth:`PoolCore.put`, the single place a connection
becomes available: a check-in, a reconnection, a finished reset or health
check, a newly opened on-demand connection.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol

import outcome
import trio
from psycopg import pq
from psycopg.rows import tuple_row

from otpy._deadlines import Bucket, Deadlines
from otpy.pg.config import DatabaseConfig, PoolConfig
from otpy.pg.pool.errors import (
    PoolClosed,
    PoolError,
    PoolOverloaded,
    PoolTimeout,
    PoolUnavailable,
)
from otpy.pg.pool.types import HOLD_BUCKETS, WAIT_BUCKETS, PoolStats

if TYPE_CHECKING:
    from psycopg.rows import TupleRow

    from otpy.pg.connection import TrioConnection

__all__ = ["PoolCore", "Slot", "SlotOwner", "SlotState"]

logger = logging.getLogger("otpy.pg.pool")

_IDLE_TX: Final = pq.TransactionStatus.IDLE

# trio's functions of the hot path, bound once: ``trio.lowlevel.x`` costs two
# attribute lookups per call, and a queued checkout makes three such calls.
_current_task: Final = trio.lowlevel.current_task
_reschedule: Final = trio.lowlevel.reschedule
_wait_task_rescheduled: Final = trio.lowlevel.wait_task_rescheduled
_Value: Final = outcome.Value

#: Fraction by which ``max_lifetime`` and ``max_idle`` are shortened at random
#: per connection, so that connections opened together are not all replaced
#: (or closed) in the same instant.
LIFETIME_JITTER: Final = 0.1


class SlotState(enum.IntEnum):
    """Where one connection slot is in its life."""

    CONNECTING = 0
    """Its worker is opening (or re-opening) the connection."""
    IDLE = 1
    """On the idle stack, ready for a caller."""
    IN_USE = 2
    """Checked out by a caller."""
    BUSY = 3
    """Its worker is resetting, health-checking or closing it."""
    CLOSED = 4
    """Its worker is gone; the connection is (or will be, at check-in) closed."""


class SlotOwner(Protocol):
    """What the pool state needs from a slot's worker."""

    def request_maintenance(self) -> None:
        """A dirty or reclaimed connection came back: reset or replace it (without blocking)."""


class Slot:
    """One connection of a pool and its bookkeeping; owned by one worker actor.

    Only the worker opens and closes ``conn``; callers borrow it between
    checkout and checkin.
    """

    __slots__ = (
        "checked_at",
        "conn",
        "ephemeral",
        "expired",
        "expires_at",
        "holder",
        "idle_since",
        "max_idle",
        "reclaim",
        "reported_hold",
        "retired",
        "state",
        "taken_at",
        "worker",
    )

    def __init__(self, worker: SlotOwner, ephemeral: bool) -> None:
        self.worker = worker
        self.ephemeral = ephemeral
        self.conn: TrioConnection[TupleRow] | None = None
        self.state = SlotState.CONNECTING
        self.holder: trio.lowlevel.Task | None = None
        self.idle_since = 0.0
        self.checked_at = 0.0
        self.expires_at = math.inf
        self.expired = False
        self.max_idle = math.inf
        self.retired = False
        self.reclaim = False
        #: When the current holder took it (with the pool's ``timing`` on).
        self.taken_at = 0.0
        #: ``taken_at`` of the checkout already reported as held too long.
        self.reported_hold = -1.0

    def __repr__(self) -> str:
        return f"<Slot {self.state.name}{' ephemeral' if self.ephemeral else ''}>"


class _Waiter:
    """A caller queued for a connection.

    ``bucket`` is where the pool's :class:`~otpy._deadlines.Deadlines` filed
    its deadline: whoever takes the waiter out of the queue (served,
    cancelled, failed) drops it from there too, in O(1).
    """

    __slots__ = ("bucket", "core", "start", "task")

    bucket: Bucket[_Waiter]

    def __init__(self, task: trio.lowlevel.Task, start: float, core: PoolCore) -> None:
        self.task = task
        self.start = start
        self.core = core

    def abort(self, _: Any) -> trio.lowlevel.Abort:
        """The waiting task was cancelled: leave the queue (atomically, so never served)."""
        core = self.core
        if core.waiters.pop(self, 0) is None:
            self.bucket.pop(self, None)
            core.cancelled_waits += 1
            if core._changed is not None:
                core._notify()
        return trio.lowlevel.Abort.SUCCEEDED


def _jittered(value: float | None) -> float:
    if value is None:
        return math.inf
    return value * (1.0 - LIFETIME_JITTER * random.random())


class PoolCore:
    """The state of one pool: slots, idle stack, FIFO waiters, counters.

    Created by the pool manager; its methods are called from callers' tasks
    (checkout/checkin), from workers (connection life cycle) and from the
    manager's timer task (waiter deadlines, :meth:`run_timer`).  None of
    them blocks except :meth:`checkout` (parks the calling task) and
    :meth:`run_timer`.
    """

    def __init__(
        self,
        name: str,
        config: PoolConfig,
        database: DatabaseConfig,
        request_grow: Callable[[], None] | None = None,
        *,
        timing: bool = True,
    ) -> None:
        self.name = name
        #: Record checkout times: the hold-time histogram and the long-hold
        #: warning need them (one clock read at checkout and one at checkin).
        self.timing = timing
        self.config = config
        self.database = database
        self._request_grow = request_grow
        self.idle: dict[Slot, None] = {}
        self.waiters: dict[_Waiter, None] = {}
        self.slots: set[Slot] = set()
        self.closed = False
        self.down = False
        self.last_error: str | None = None
        self.pending_grow = 0
        self.connecting = 0
        self._changed: trio.Event | None = None
        # The run's clock, read directly: trio.current_time() costs three
        # times as much, and the queued path reads the time twice per checkout.
        self._now: Callable[[], float] = trio.lowlevel.current_clock().current_time
        #: The waiters' deadlines, expired by :meth:`run_timer` (FIFO per timeout).
        self.deadlines: Deadlines[_Waiter] = Deadlines(self._expire, self._now)
        # counters
        self.checkouts = 0
        self.waited_checkouts = 0
        self.wait_time_total = 0.0
        self.wait_time_max = 0.0
        self.wait_buckets = [0] * len(WAIT_BUCKETS)
        self.timeouts = 0
        self.overloaded = 0
        self.cancelled_waits = 0
        self.unavailable = 0
        self.connection_errors = 0
        self.connections_opened = 0
        self.connections_lost = 0
        self.connections_replaced = 0
        self.connections_closed_idle = 0
        self.rollbacks = 0
        self.health_checks = 0
        self.leaked = 0
        self.hold_buckets = [0] * len(HOLD_BUCKETS)
        self.hold_time_total = 0.0
        self.held_too_long = 0

    def __repr__(self) -> str:
        return f"<PoolCore {self.name!r} {len(self.slots)} slots, {len(self.idle)} idle>"

    # -- the hot path (caller's task, no await) -----------------------------------

    def checkout_nowait(self) -> Slot | None:
        """Take an idle connection without waiting, or return None.

        The idle stack is only ever non-empty while nobody waits (:meth:`put`
        hands a connection to the first waiter before stacking it), so taking
        from it never overtakes a queued caller.  LIFO: the most recently used
        connection is the warmest, and the ones at the bottom stay idle long
        enough to be health-checked or closed by ``max_idle``.
        """
        idle = self.idle
        if idle:
            slot = idle.popitem()[0]
            slot.state = SlotState.IN_USE
            slot.holder = _current_task()
            self.checkouts += 1
            if self.timing:
                slot.taken_at = self._now()
            if self._changed is not None:
                self._notify()
            return slot
        return None

    def checkin(self, slot: Slot) -> bool:
        """Give a connection back; False if the caller must close it (its pool is gone).

        Clean connections (idle transaction status, the pool's session
        attributes, not past their lifetime) are served to the next waiter or
        stacked at once, with no I/O (not even a clock read when a waiter
        takes it: the worker flags a connection past its lifetime).  Anything
        else goes to the slot's worker, which rolls back or replaces it before
        it is used again.
        """
        if slot.state is not SlotState.IN_USE:
            raise PoolError(
                f"a connection of pool {self.name!r} was returned twice (or never checked out)",
                self.name,
            )
        slot.holder = None
        if self.timing:
            self._record_hold(slot)
        if slot.retired:
            slot.state = SlotState.CLOSED
            if self._changed is not None:
                self._notify()
            return False
        conn = slot.conn
        assert conn is not None
        if (
            conn.pgconn.transaction_status == _IDLE_TX
            and conn.autocommit
            and conn.row_factory is tuple_row
            and conn.isolation_level is None
            and conn.read_only is None
            and conn.deferrable is None
            and not slot.expired
        ):
            self.put(slot)
            return True
        slot.state = SlotState.BUSY
        slot.worker.request_maintenance()
        if self._changed is not None:
            self._notify()
        return True

    def put(self, slot: Slot, now: float | None = None, *, keep_idle_since: bool = False) -> None:
        """Make a connection available: to the first waiter, else onto the idle stack."""
        waiters = self.waiters
        if waiters:
            waiter = next(iter(waiters))
            del waiters[waiter]
            waiter.bucket.pop(waiter, None)
            slot.state = SlotState.IN_USE
            slot.holder = waiter.task
            self.checkouts += 1
            self._record_wait(waiter)
            if self.timing:
                slot.taken_at = self._now()
            _reschedule(waiter.task, _Value(slot))
        else:
            slot.state = SlotState.IDLE
            if not keep_idle_since:
                slot.idle_since = self._now() if now is None else now
            self.idle[slot] = None
        if self._changed is not None:
            self._notify()

    # -- the slow path: queueing --------------------------------------------------

    async def checkout(self, timeout: float | None = None) -> Slot:  # noqa: ASYNC109
        """Take a connection, queueing (FIFO) for up to ``timeout`` seconds.

        ``timeout`` defaults to the pool's ``checkout_timeout``.

        Raises:
            PoolTimeout: nothing became free in time.
            PoolOverloaded: ``max_waiting`` callers already wait.
            PoolUnavailable: the pool has no connection and cannot open one.
            PoolClosed: the pool stopped.
        """
        # Inlined in PooledConnection.__aenter__ and query() (hot path): keep in sync.
        await trio.lowlevel.checkpoint_if_cancelled()
        slot = self.checkout_nowait()
        if slot is None:
            slot = await self.enqueue(timeout)
        return slot

    def enqueue(self, timeout: float | None) -> Awaitable[Slot]:
        """Queue the calling task for a connection; await the result at once.

        A plain function returning trio's parking awaitable, rather than a
        coroutine, to spare a coroutine object on the queued path: the
        caller does ``slot = await core.enqueue(timeout)``.  The wait-time
        statistics are recorded by :meth:`put` when it serves the waiter.

        Raises (before queueing) as :meth:`checkout` does.
        """
        waiters = self.waiters
        # While the pool is down, callers are refused at once as long as some
        # worker is retrying; with nobody retrying (on-demand connections only),
        # the caller queues and triggers a fresh attempt, so a pool of size
        # (0, n) recovers once the server is back.
        if (
            self.closed
            or (self.down and self.connecting)
            or len(waiters) >= self.config.max_waiting
        ):
            self._refuse()
        limit = self.config.checkout_timeout if timeout is None else timeout
        if limit <= 0:
            raise self._timeout_error(limit)
        start = self._now()
        waiter = _Waiter(_current_task(), start, self)
        waiters[waiter] = None
        waiter.bucket = self.deadlines.add(waiter, limit, start)
        if len(self.slots) + self.pending_grow < self.config.max_size:
            self._maybe_grow()
        if self._changed is not None:
            self._notify()
        # Awaited by the caller at once (see the docstring).
        parked: Awaitable[Slot] = _wait_task_rescheduled(waiter.abort)
        return parked

    def _record_wait(self, waiter: _Waiter) -> None:
        waited = self._now() - waiter.start
        self.waited_checkouts += 1
        self.wait_time_total += waited
        if waited > self.wait_time_max:
            self.wait_time_max = waited
        i = 0
        while waited > WAIT_BUCKETS[i]:
            i += 1
        self.wait_buckets[i] += 1

    def _record_hold(self, slot: Slot) -> None:
        held = self._now() - slot.taken_at
        self.hold_time_total += held
        i = 0
        while held > HOLD_BUCKETS[i]:
            i += 1
        self.hold_buckets[i] += 1

    def _refuse(self) -> None:
        if self.closed:
            raise self._closed_error()
        if self.down and self.connecting:
            self.unavailable += 1
            raise self._unavailable_error()
        max_waiting = self.config.max_waiting
        if len(self.waiters) >= max_waiting:
            self.overloaded += 1
            raise PoolOverloaded(
                f"pool {self.name!r} is overloaded: {len(self.waiters)} callers already wait "
                f"for one of its {len(self.slots)} connections (max_waiting={max_waiting}); "
                f"the checkout was refused without waiting",
                self.name,
                len(self.waiters),
                max_waiting,
            )

    def _closed_error(self) -> PoolClosed:
        return PoolClosed(f"pool {self.name!r} is stopped", self.name)

    def _unavailable_error(self) -> PoolUnavailable:
        error = self.last_error or "unknown error"
        return PoolUnavailable(
            f"pool {self.name!r} has no connection to {self.database.describe()} and cannot "
            f"open one; last error: {error}",
            self.name,
            error,
        )

    def _timeout_error(self, timeout: float) -> PoolTimeout:
        self.timeouts += 1
        in_use = sum(1 for s in self.slots if s.state is SlotState.IN_USE)
        return PoolTimeout(
            f"pool {self.name!r}: no connection became free within {timeout:g} s "
            f"(size {len(self.slots)} of max {self.config.max_size}: {in_use} in use, "
            f"{self.connecting} connecting; {len(self.waiters)} other callers waiting)",
            self.name,
            timeout,
            len(self.slots),
            len(self.waiters),
        )

    def _maybe_grow(self) -> None:
        """Ask the manager for an on-demand connection if queued callers outnumber openings."""
        if self._request_grow is not None and len(self.waiters) > (
            self.connecting + self.pending_grow
        ):
            self.pending_grow += 1
            self._request_grow()

    async def run_timer(self) -> NoReturn:
        """Expire waiters whose deadline passed; runs in the manager for the pool's life.

        One task for all deadlines (:class:`~otpy._deadlines.Deadlines`)
        instead of a cancel scope per waiter: the queue is FIFO and most
        callers use the same timeout, so the earliest deadline is nearly
        always at the head, and the timer wakes about once per timeout period
        under a steady load.
        """
        await self.deadlines.run()

    def _expire(self, waiter: _Waiter, timeout: float) -> None:
        """``waiter`` queued ``timeout`` seconds without a connection: fail it with PoolTimeout."""
        if self.waiters.pop(waiter, 0) is None:
            error = self._timeout_error(timeout)
            trio.lowlevel.reschedule(waiter.task, outcome.Error(error))
            self._notify()

    # -- worker side ----------------------------------------------------------------

    def add_slot(self, worker: SlotOwner, ephemeral: bool) -> Slot:
        """Register a new worker's slot (CONNECTING)."""
        if self.closed:
            raise self._closed_error()
        slot = Slot(worker, ephemeral)
        self.slots.add(slot)
        self.connecting += 1
        if ephemeral and self.pending_grow:
            self.pending_grow -= 1
        self._notify()
        return slot

    def connected(self, slot: Slot, conn: TrioConnection[TupleRow]) -> None:
        """The worker opened ``slot``'s connection: serve it."""
        now = self._now()
        slot.conn = conn
        slot.expires_at = now + _jittered(self.config.max_lifetime)
        slot.max_idle = _jittered(self.config.max_idle) if slot.ephemeral else math.inf
        slot.checked_at = now
        slot.expired = False
        self.connecting -= 1
        self.connections_opened += 1
        self.down = False
        self.put(slot, now)

    def connect_failed(self, slot: Slot, error: str) -> None:
        """A connection attempt failed; with no usable connection left, fail the waiters fast."""
        self.connection_errors += 1
        self.last_error = error
        # Slots under maintenance (BUSY) do not count: after a server restart
        # they are the dead connections being replaced.
        if not any(s.state is SlotState.IDLE or s.state is SlotState.IN_USE for s in self.slots):
            self.down = True
            if self.waiters:
                waiters = list(self.waiters)
                self.waiters.clear()
                for waiter in waiters:
                    waiter.bucket.pop(waiter, None)
                    self.unavailable += 1
                    trio.lowlevel.reschedule(waiter.task, outcome.Error(self._unavailable_error()))
        self._notify()

    def restored(self, slot: Slot, *, keep_idle_since: bool = False) -> None:
        """The worker finished maintaining ``slot`` and the connection is fine: serve it.

        ``keep_idle_since`` after a health check, so that the connection's idle
        time (for ``max_idle``) keeps counting.
        """
        self.down = False
        self.put(slot, keep_idle_since=keep_idle_since)

    def take_idle(self, slot: Slot) -> bool:
        """Take ``slot`` off the idle stack for maintenance; False if it is not idle."""
        if self.idle.pop(slot, 0) is None:
            slot.state = SlotState.BUSY
            self._notify()
            return True
        return False

    def disconnected(self, slot: Slot) -> None:
        """The worker closed ``slot``'s connection and will open a new one."""
        if slot.conn is not None:
            slot.conn = None
            self.connecting += 1
        slot.state = SlotState.CONNECTING
        self._notify()

    def remove_slot(self, slot: Slot) -> bool:
        """The slot's worker is exiting; True if the worker must close the connection.

        A connection checked out at this moment stays with its caller, who
        closes it at check-in (``checkin`` returns False for a retired slot).
        """
        self.slots.discard(slot)
        self.idle.pop(slot, None)
        slot.retired = True
        if slot.conn is None and slot.state is not SlotState.CLOSED:
            self.connecting -= 1
        owns = slot.state is not SlotState.IN_USE
        if owns:
            slot.state = SlotState.CLOSED
        if (
            not self.closed
            and self.waiters
            and len(self.slots) + self.pending_grow < self.config.max_size
        ):
            self._maybe_grow()
        self._notify()
        return owns

    def reclaim_leaks(self) -> int:
        """Reclaim connections whose holder task has ended without checking them in.

        In trio a task cannot end without leaving its ``async with`` blocks,
        so this only catches low-level :func:`~otpy.pg.pool.acquire` users that
        forgot ``release()``.  The connection's state is unknown: its worker
        replaces it.
        """
        count = 0
        for slot in list(self.slots):
            task = slot.holder
            if slot.state is SlotState.IN_USE and task is not None:
                coro = task.coro
                if getattr(coro, "cr_frame", True) is None:
                    count += 1
                    self.leaked += 1
                    logger.warning(
                        "pool %r: task %r ended without returning its connection; replacing it",
                        self.name,
                        task.name,
                        extra={"event": "pool_connection_leaked", "pool": self.name},
                    )
                    slot.holder = None
                    slot.reclaim = True
                    slot.state = SlotState.BUSY
                    slot.worker.request_maintenance()
        if count:
            self._notify()
        return count

    def warn_long_holds(self, threshold: float) -> int:
        """Log, once per checkout, each connection held longer than ``threshold`` seconds.

        The warning carries the stack of the holding task *now* (where it
        sits while it keeps the connection), taken from trio's task object
        at sweep time: nothing is captured on the checkout path.  Needs the
        pool's ``timing``; returns how many connections were reported.
        """
        if not self.timing:
            return 0
        now = self._now()
        count = 0
        for slot in self.slots:
            task = slot.holder
            if (
                slot.state is SlotState.IN_USE
                and task is not None
                and now - slot.taken_at > threshold
                and slot.reported_hold != slot.taken_at
            ):
                slot.reported_hold = slot.taken_at
                count += 1
                self.held_too_long += 1
                stack = "".join(traceback.format_list(_task_stack(task)))
                logger.warning(
                    "pool %r: task %r has held a connection for %.1f s (threshold %g s); "
                    "it is at:\n%s",
                    self.name,
                    task.name,
                    now - slot.taken_at,
                    threshold,
                    stack.rstrip(),
                    extra={
                        "event": "pool_connection_held_long",
                        "pool": self.name,
                        "task": task.name,
                        "held_seconds": round(now - slot.taken_at, 3),
                    },
                )
        return count

    def close(self) -> None:
        """The manager is exiting: refuse new checkouts, fail the waiters."""
        if self.closed:
            return
        self.closed = True
        waiters = list(self.waiters)
        self.waiters.clear()
        for waiter in waiters:
            waiter.bucket.pop(waiter, None)
            trio.lowlevel.reschedule(waiter.task, outcome.Error(self._closed_error()))
        self._notify()

    # -- observation --------------------------------------------------------------

    def _notify(self) -> None:
        event = self._changed
        if event is not None:
            self._changed = None
            event.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, re-checking whenever the pool's state changes."""
        while not predicate():
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    def stats(self) -> PoolStats:
        """A snapshot of the pool's state and counters (no I/O).

        ``hold_histogram`` counts the connections given back; the hold
        times are measured only with the pool's ``timing`` on.
        """
        states = [0] * len(SlotState)
        for slot in self.slots:
            states[slot.state] += 1
        # Checkouts that found an idle connection waited 0 s: the first bucket.
        # (A handed-over checkout whose task has not resumed yet is briefly
        # counted there too; max() keeps the figure sane.)
        buckets = list(self.wait_buckets)
        buckets[0] += max(0, self.checkouts - self.waited_checkouts)
        return PoolStats(
            name=self.name,
            min_size=self.config.min_size,
            max_size=self.config.max_size,
            size=len(self.slots),
            idle=states[SlotState.IDLE],
            in_use=states[SlotState.IN_USE],
            busy=states[SlotState.BUSY],
            connecting=states[SlotState.CONNECTING],
            waiting=len(self.waiters),
            checkouts=self.checkouts,
            waited_checkouts=self.waited_checkouts,
            wait_time_total=self.wait_time_total,
            wait_time_max=self.wait_time_max,
            wait_histogram=tuple(zip(WAIT_BUCKETS, buckets, strict=True)),
            timeouts=self.timeouts,
            overloaded=self.overloaded,
            cancelled_waits=self.cancelled_waits,
            unavailable=self.unavailable,
            connection_errors=self.connection_errors,
            connections_opened=self.connections_opened,
            connections_lost=self.connections_lost,
            connections_replaced=self.connections_replaced,
            connections_closed_idle=self.connections_closed_idle,
            rollbacks=self.rollbacks,
            health_checks=self.health_checks,
            leaked=self.leaked,
            down=self.down,
            last_error=self.last_error,
            hold_time_total=self.hold_time_total,
            hold_histogram=tuple(zip(HOLD_BUCKETS, self.hold_buckets, strict=True)),
            held_too_long=self.held_too_long,
        )


def _task_stack(task: trio.lowlevel.Task) -> traceback.StackSummary:
    """Where ``task`` is suspended, outermost frame first (trio's own await chain)."""
    return traceback.StackSummary.extract(task.iter_await_frames())
