"""Deferred acknowledgement (``ack="manual"``) and failed-attempt counting.

:class:`AckTracker` is what lets a handler acknowledge later, out of order:
the reader records each delivered transaction (commit LSN -> end LSN) in
delivery order; ``ref.ack(commit_lsn)`` marks one; the flush position sent to
the server moves to the end of the longest *acknowledged prefix* only (the
highest LSN below which everything was acknowledged), so a crash can only
redeliver what was not acknowledged, never skip it.  Memory is bounded by
``max_unacked``: at the cap the reader stops taking batches (the socket is no
longer read: TCP backpressure) until an acknowledgement makes room, while the
status loop keeps the walsender alive.

Why a dict in delivery order rather than a heap: transactions are delivered
in commit order, so the prefix to release is always at the front; an
insertion-ordered dict gives O(1) insert, O(1) mark by commit LSN and
amortised O(1) release, without the heap's re-ordering.

:class:`FailureCount` counts failed deliveries of one transaction (by commit
LSN) for the ``on_failure`` policies; it lives on the subscription so that
it survives the reader's restarts (each restart is a new actor).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from .lsn import LSN

__all__ = ["AckTracker", "FailureCount"]


class AckTracker:
    """Delivered-but-unacknowledged transactions of one reader incarnation.

    Args:
        cap: how many may be outstanding before :meth:`wait_room` blocks.
        on_release: called with (end LSN of the released prefix, how many
            transactions it released) whenever the acknowledged prefix grows.
    """

    def __init__(self, cap: int, on_release: Callable[[LSN, int], None]) -> None:
        self.cap = cap
        self._on_release = on_release
        # commit LSN -> [end LSN, acknowledged], in delivery (= commit) order.
        self._outstanding: dict[LSN, list[object]] = {}
        self._room = trio.Event()
        #: True while the reader waits for room (the cap is reached).
        self.blocked = False
        self._blocked_changed = trio.Event()

    @property
    def outstanding(self) -> int:
        """How many delivered transactions wait for their acknowledgement (or for an older one)."""
        return len(self._outstanding)

    def delivered(self, commit_lsn: LSN, end_lsn: LSN, *, acked: bool = False) -> None:
        """Record a transaction the handler received (``acked``: nothing to wait for)."""
        self._outstanding[commit_lsn] = [end_lsn, acked]
        if acked:
            self._release()

    def ack(self, commit_lsn: LSN) -> bool:
        """Mark the transaction committed at ``commit_lsn`` as done; False if it is not outstanding.

        A transaction is not outstanding when it was already acknowledged, or
        when it was delivered by a previous incarnation of the reader (it is
        delivered again after the restart: acknowledge that delivery).
        """
        entry = self._outstanding.get(commit_lsn)
        if entry is None or entry[1]:
            return False
        entry[1] = True
        self._release()
        return True

    def _release(self) -> None:
        released = 0
        end: object = None
        outstanding = self._outstanding
        while outstanding:
            first = next(iter(outstanding))
            entry = outstanding[first]
            if not entry[1]:
                break
            end = entry[0]
            del outstanding[first]
            released += 1
        if released:
            assert isinstance(end, LSN)
            self._on_release(end, released)
            if len(outstanding) < self.cap:
                self._room.set()

    async def wait_room(self) -> None:
        """Return once fewer than ``cap`` transactions are outstanding (backpressure)."""
        while len(self._outstanding) >= self.cap:
            self._set_blocked(True)
            self._room = trio.Event()
            await self._room.wait()
        self._set_blocked(False)

    def _set_blocked(self, blocked: bool) -> None:
        if blocked != self.blocked:
            self.blocked = blocked
            self._blocked_changed.set()
            self._blocked_changed = trio.Event()

    async def wait_blocked(self, blocked: bool = True) -> None:
        """Wait until the reader is (or is no longer) held at the cap; for tests and monitoring."""
        while self.blocked != blocked:
            await self._blocked_changed.wait()


@attrs.define
class FailureCount:
    """Failed deliveries of the transaction that failed last, by its commit LSN.

    Counting restarts at 1 when another transaction fails, and is cleared
    when the counted transaction is acknowledged.
    """

    commit_lsn: LSN | None = None
    attempts: int = 0
    #: The handler's last exception on that transaction (what a parking records).
    error: Exception | None = None

    def failed(self, commit_lsn: LSN, error: Exception | None = None) -> int:
        """Count one more failed delivery of ``commit_lsn``; return its attempts so far."""
        if commit_lsn != self.commit_lsn:
            self.commit_lsn = commit_lsn
            self.attempts = 0
        self.attempts += 1
        self.error = error
        return self.attempts

    def exhausted(self, commit_lsn: LSN, max_attempts: int) -> Exception | None:
        """The last error of ``commit_lsn`` if it failed ``max_attempts`` times, else None.

        A transaction that failed on a later chunk is parked whole when it is
        delivered again from chunk 0: this says so at that chunk.
        """
        if commit_lsn == self.commit_lsn and self.attempts >= max_attempts:
            return self.error
        return None

    def succeeded(self, commit_lsn: LSN) -> None:
        """The transaction at ``commit_lsn`` was acknowledged: forget its failures."""
        if commit_lsn == self.commit_lsn:
            self.commit_lsn = None
            self.attempts = 0
            self.error = None
