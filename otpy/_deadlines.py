"""One task that enforces many deadlines: the timer behind call timeouts and pool waits.

Both ``otpy.gen_server`` (a ``call`` with a timeout) and the pool (a caller
queued for a connection) need the same thing: many short-lived deadlines, most
of them never reached, because the reply or the connection comes first.

Why not a cancel scope per deadline (``trio.move_on_after``)?  Measured, a
scope per call costs about a third of a call round trip: trio files every
scope deadline in its run loop's heap.  Here a deadline costs two dict
operations instead.  Deadlines are kept in one insertion-ordered dict per
timeout value; because the clock only moves forward, each dict is also ordered
by deadline, so adding and removing are O(1) and the timer task only looks at
the head of each dict.  It sleeps until the earliest deadline it knows of and
is woken (its scope's deadline moved earlier) only when a new entry would
expire before that; under a steady stream of entries with the same timeout it
wakes about once per timeout period.  (trio's own ``_core._run.Deadlines`` is
the model: one heap of deadlines for all cancel scopes, one wake-up.)

Each owner runs :meth:`Deadlines.run` in a task it controls: the call timers
in a system task per trio run, the pool's in its manager's nursery.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Generic, NoReturn, TypeVar

import trio

K = TypeVar("K", bound=Hashable)

Bucket = dict[K, float]
"""The entries that share one timeout value, in deadline order (key -> deadline)."""


class Deadlines(Generic[K]):
    """Deadlines for many keys, expired by one task running :meth:`run`.

    ``expire(key, timeout)`` is called (from the :meth:`run` task) once for
    each key whose deadline passed and that was not removed before; it must
    not block.  :meth:`add` returns the key's bucket so that the owner can
    drop the entry in O(1) with ``bucket.pop(key, None)`` when the awaited
    thing arrives first; the owner usually keeps the bucket on the key itself.
    """

    __slots__ = ("_buckets", "_clock", "_expire", "_scope", "_wake_at")

    def __init__(
        self,
        expire: Callable[[K, float], object],
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._buckets: dict[float, Bucket[K]] = {}
        self._expire = expire
        self._clock = clock if clock is not None else trio.current_time
        self._wake_at = math.inf
        self._scope = trio.CancelScope()

    def __len__(self) -> int:
        """How many entries are waiting (for statistics and tests)."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def add(self, key: K, timeout: float, start: float | None = None) -> Bucket[K]:
        """File ``key`` to expire ``timeout`` seconds after ``start`` (default: now)."""
        deadline = (self._clock() if start is None else start) + timeout
        bucket = self._buckets.get(timeout)
        if bucket is None:
            bucket = self._buckets[timeout] = {}
        bucket[key] = deadline
        if deadline < self._wake_at:
            self._wake_at = deadline
            self._scope.deadline = deadline
        return bucket

    def expire_due(self) -> float:
        """Expire every entry whose deadline passed; return the next deadline (or inf).

        :meth:`run` calls this on each wake-up; tests of the owners' pure
        logic call it directly under a ``MockClock``.
        """
        now = self._clock()
        # An ``expire`` callback may add entries; ``add`` lowers ``_wake_at``.
        self._wake_at = wake_at = math.inf
        for timeout, bucket in list(self._buckets.items()):
            while bucket:
                key, deadline = next(iter(bucket.items()))
                if deadline > now:
                    wake_at = min(wake_at, deadline)
                    break
                del bucket[key]
                self._expire(key, timeout)
            if not bucket:
                # Computed timeouts (a remaining deadline) are all distinct:
                # keeping their emptied buckets would grow this dict forever.
                del self._buckets[timeout]
        self._wake_at = min(self._wake_at, wake_at)
        return self._wake_at

    async def run(self) -> NoReturn:
        """Sleep until the earliest deadline, expire what is due, repeat; never returns."""
        while True:
            with self._scope:
                await trio.sleep_forever()
            self._scope = trio.CancelScope()
            self._scope.deadline = self.expire_due()
