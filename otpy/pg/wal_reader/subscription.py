"""A subscription: the handle of one slot's reader, and this process's table of them.

:func:`~otpy.pg.wal_reader.subscribe` returns a :class:`Subscription`, and the
handler receives it as ``ref``.  It outlives the reader actors that serve it
(each crash starts a new :class:`~otpy.pg.wal_reader.reader.WalReader`), so
what must survive a restart lives here, in its :class:`ReaderState`: whether a
reader ever started or streamed from the persistent slot, the failures of the
transaction that failed last, the terminal error.

The process keeps one table of live subscriptions keyed by (host, port, slot),
as an Erlang node would: slot names are cluster-wide, so a second
``subscribe`` of the same slot in this process is
:class:`~otpy.pg.replication.errors.AlreadySubscribed`.  :func:`claim` enters a
subscription, :func:`forget` removes it when it ends (for good, or by
``unsubscribe``), :func:`subscriptions` lists the live ones.

Design and why: the handle and its state are plain objects shared by
reference, not messages to an actor, so ``wait_streaming``, ``metrics`` and
``ack`` work while the reader restarts, and cost no message round trip.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from otpy.actor import Ref
from otpy.pg.replication.acks import AckTracker, FailureCount
from otpy.pg.replication.errors import (
    AlreadySubscribed,
    ChangesLost,
    HandlerFailed,
    ReplicationError,
    StreamEnded,
)
from otpy.pg.replication.handler import HandlesReplication
from otpy.pg.replication.lsn import LSN
from otpy.pg.replication.options import ReaderOptions
from otpy.registry import Registry, Via, whereis
from otpy.supervisor import which_children

from .metrics import ReaderCounters, ReaderMetrics

__all__ = [
    "ReaderState",
    "Subscription",
    "Terminal",
    "claim",
    "forget",
    "subscriptions",
]

# Readers are registered here under (host, port, slot): slot names are cluster-wide.
_READERS = Registry("wal_readers")
# Live subscriptions of this process, for AlreadySubscribed (process-wide, like a node).
_SUBSCRIPTIONS: dict[tuple[str, str, str], Subscription] = {}

#: What ends a subscription for good: its changes are lost, or (``on_failure``
#: policy ``stop``) the handler kept failing on one transaction.
Terminal = ChangesLost | HandlerFailed


@attrs.define(eq=False)
class ReaderState:
    """What a subscription's reader is doing (see :meth:`Subscription.wait_streaming`).

    Shared by every incarnation of the subscription's reader, so it is also
    where the subscription remembers what must survive a restart.
    """

    #: How many times a reader of the subscription started streaming.
    starts: int = 0
    #: True while a reader streams (False while standing by, restarting or stopped).
    streaming: bool = False
    #: True once a reader of the subscription started (its first ``init`` returned):
    #: later starts are restarts, whose terminal errors end the subscription
    #: instead of reaching a ``subscribe`` caller.
    started: bool = False
    #: True once a reader streamed from the persistent slot: from then on a
    #: missing slot is :class:`SlotLost`, never silently re-created.
    slot_seen: bool = False
    #: The terminal error that ended the subscription (:class:`ChangesLost`,
    #: :class:`HandlerFailed`), or None.
    error: Terminal | None = None
    #: True once the subscription ended for good (terminal error or unsubscribe).
    ended: bool = False
    #: Failed deliveries of the transaction that failed last (``on_failure``).
    failures: FailureCount = attrs.field(factory=FailureCount)
    #: The current reader's outstanding transactions (``ack="manual"``), or None.
    acks: AckTracker | None = None
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def set_streaming(self, streaming: bool) -> None:
        """Record that a reader started (True) or stopped (False) streaming; wake the waiters.

        Called by the reader (:class:`~otpy.pg.wal_reader.reader.WalReader`), not by users.
        """
        if streaming:
            self.starts += 1
        self.streaming = streaming
        self._wake()

    def end(self) -> None:
        """Record that the subscription ended for good; wake the waiters.

        Called by the reader after a terminal stop and by
        :func:`~otpy.pg.wal_reader.unsubscribe`, not by users.
        """
        self.ended = True
        self._wake()


@attrs.frozen(eq=False, repr=False)
class Subscription:
    """The handle ``subscribe`` returns and handlers receive as ``ref``.

    Stable across restarts of the reader (unlike the actor's ref, see
    :meth:`reader`); pass it to :func:`unsubscribe`.
    """

    slot: str
    publications: tuple[str, ...]
    database: str
    options: ReaderOptions
    handler: HandlesReplication
    supervisor: Ref
    key: tuple[str, str, str]
    child_id: tuple[str, str, int]
    connect_kwargs: dict[str, Any] = attrs.field(repr=False)
    state: ReaderState = attrs.field(factory=ReaderState)
    counters: ReaderCounters = attrs.field(factory=ReaderCounters, repr=False)

    def metrics(self) -> ReaderMetrics:
        """A snapshot of the reader's positions, lag and counters (no I/O, no message)."""
        state = self.state
        return self.counters.snapshot(
            self.slot,
            self.database,
            streaming=state.streaming,
            ended=state.ended,
            starts=state.starts,
        )

    def __repr__(self) -> str:
        return f"<Subscription slot={self.slot!r} db={self.database!r} {self.options.slot_type}>"

    @property
    def name(self) -> Via:
        """The registered name of the reader actor (valid across its restarts)."""
        return Via(_READERS, self.key)

    def reader(self) -> Ref | None:
        """The running reader actor, or None while it is being restarted."""
        return whereis(self.name)

    @property
    def error(self) -> Terminal | None:
        """The terminal error that ended the subscription, or None.

        Set before the terminal ``handle_replication_stop`` call, so a handler
        can tell a terminal stop (``ref.error is not None``: no restart
        follows, resynchronise) from an ordinary one.
        """
        return self.state.error

    async def wait_streaming(self, starts: int = 1) -> None:
        """Wait until a reader streams and streaming has started ``starts`` times in all.

        A standby reader counts once it has taken the slot over; after a
        crash, ``wait_streaming(previous_starts + 1)`` waits for the restart.
        Bound it with ``trio.fail_after``.

        Raises:
            ChangesLost: the subscription ended for good (:attr:`error`).
            StreamEnded: it was unsubscribed.
        """
        state = self.state
        while not (state.streaming and state.starts >= starts):
            self._raise_if_ended()
            await state._changed.wait()

    async def wait_stopped(self) -> Terminal | None:
        """Wait until the subscription ended for good; return its terminal error, if any.

        Returns the :class:`ChangesLost` or :class:`HandlerFailed` error after a terminal stop (once
        ``handle_replication_stop`` was called), None after ``unsubscribe``.
        Restarts after ordinary crashes do not end a subscription.
        """
        state = self.state
        while not state.ended:
            await state._changed.wait()
        return state.error

    def ack(self, commit_lsn: LSN | int | str) -> bool:
        """Acknowledge the transaction committed at ``commit_lsn`` (``ack="manual"`` only).

        Call it once the sink confirmed the transaction (``changes.commit_lsn``
        of its batch), in any order and from any task.  The server is told
        the highest position below which *every* delivered transaction was
        acknowledged.  Returns False when the transaction is not outstanding:
        already acknowledged, or delivered by a reader that has since
        restarted (it is delivered again: acknowledge that delivery).

        Raises:
            ReplicationError: the subscription acknowledges automatically.
        """
        if not self.options.manual_ack:
            raise ReplicationError(
                f"slot {self.slot!r}: ack() needs a subscription with ack='manual'; this one "
                f"acknowledges each transaction when handle_replication_data returns"
            )
        tracker = self.state.acks
        return tracker is not None and tracker.ack(LSN(commit_lsn))

    def _raise_if_ended(self) -> None:
        state = self.state
        if state.error is not None:
            raise state.error
        if state.ended:
            raise StreamEnded(f"the subscription of slot {self.slot!r} was unsubscribed")


def subscriptions() -> list[Subscription]:
    """The live subscriptions of this process (for metrics and health checks).

    Live: not ended, and its readers' supervisor still runs (a subscription
    whose supervisor was stopped without ``unsubscribe`` has no reader left).
    """
    return [sub for sub in _SUBSCRIPTIONS.values() if not sub.state.ended and sub.supervisor.alive]


async def claim(sub: Subscription) -> None:
    """Enter ``sub`` in this process's table: its slot is read here from now on.

    A subscription of the same (host, port, slot) that is still entered is
    dropped first if its reader is gone (its supervisor stopped, or the
    child removed without ``unsubscribe``).

    Raises:
        AlreadySubscribed: this process already reads the slot (``.subscription``).
    """
    key = sub.key
    existing = _SUBSCRIPTIONS.get(key)
    if existing is not None:
        if await _still_subscribed(existing):
            raise AlreadySubscribed(sub.slot, existing)
        if _SUBSCRIPTIONS.get(key) is existing:
            del _SUBSCRIPTIONS[key]
    if key in _SUBSCRIPTIONS:  # another task subscribed meanwhile
        raise AlreadySubscribed(sub.slot, _SUBSCRIPTIONS[key])
    _SUBSCRIPTIONS[key] = sub


def forget(sub: Subscription) -> None:
    """Remove ``sub`` from this process's subscriptions (its slot may be subscribed again).

    Called when the subscription ends: by ``unsubscribe``, by the reader on
    a terminal stop or after an ``initial_only`` snapshot, and by
    ``subscribe`` when its reader did not start.
    """
    if _SUBSCRIPTIONS.get(sub.key) is sub:
        del _SUBSCRIPTIONS[sub.key]


async def _still_subscribed(sub: Subscription) -> bool:
    if not sub.supervisor.alive:
        return False
    try:
        children = await which_children(sub.supervisor)
    except Exception:
        return False
    return any(child.id == sub.child_id for child in children)
