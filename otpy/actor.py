"""Actors: refs, mailboxes, exit reasons, monitors and links.

An actor is one trio task with a mailbox, addressed by a :class:`Ref` (the
Erlang pid).  This module holds the primitives every behaviour builds on; it
knows nothing about GenServer protocols or supervision.

Design choices, and why:

* The mailbox is unbounded and delivery never blocks (``deliver`` is a plain
  function), as in Erlang: a sender can never deadlock on a full mailbox, and an
  exiting actor can notify monitors from a ``finally`` block without awaiting.
* Delivery wakes a parked receiver with ``trio.lowlevel.reschedule`` instead of
  going through a memory channel: a call round trip is then two task switches
  and nothing else, which is as cheap as trio allows.
* A dead actor keeps its :class:`ExitReason`, so anything that arrives late (a
  monitor, a call) learns *why* it died instead of a bare ``noproc``.
* A :class:`Ref` allocates its containers (mailbox deque, links, monitors,
  pending callers) only when first used: most actors of a large population
  (one per session, per device) sit idle with none of them, and every
  container an idle actor does not hold is memory and garbage-collector work
  saved a million times over.
"""

from __future__ import annotations

import contextvars
import itertools
from collections import deque
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import outcome
import trio

from otpy.errors import ActorExited, ExitSignal

if TYPE_CHECKING:
    from otpy.gen_server import From

__all__ = [
    "KILLED",
    "NOPROC",
    "NORMAL",
    "SHUTDOWN",
    "Down",
    "Exit",
    "ExitReason",
    "Monitor",
    "NameRegistry",
    "Ref",
    "current_actor",
]


@attrs.frozen
class ExitReason:
    """Why an actor exited: the Erlang exit reason, as a value.

    ``kind`` is one of ``"normal"`` (it stopped by itself), ``"shutdown"`` (its
    supervisor or owner asked it to stop), ``"killed"`` (it was cancelled
    without running ``terminate``), ``"noproc"`` (there was no such actor) or
    ``"error"`` (it crashed; ``error`` is the exception).  ``detail`` carries an
    optional user term, like ``{shutdown, Term}``.

    ``normal`` and ``shutdown`` are the *normal* reasons: a transient child is
    not restarted after them and links do not propagate them.
    """

    kind: str
    error: BaseException | None = attrs.field(default=None, eq=False)
    detail: Any = None

    @classmethod
    def crashed(cls, error: BaseException) -> ExitReason:
        """The reason for an actor that died of ``error``."""
        return cls("error", error)

    @classmethod
    def shutdown(cls, detail: Any = None) -> ExitReason:
        """A ``shutdown`` reason, optionally with a detail (OTP's ``{shutdown, Term}``)."""
        return cls("shutdown", None, detail) if detail is not None else SHUTDOWN

    @property
    def normal(self) -> bool:
        """True for ``normal`` and ``shutdown``: an orderly exit, not a failure."""
        return self.kind in ("normal", "shutdown")

    @property
    def abnormal(self) -> bool:
        """True for crashes and kills: the exits that restart transient children."""
        return not self.normal

    def __str__(self) -> str:
        if self.error is not None:
            return f"{type(self.error).__name__}: {self.error}"
        if self.detail is not None:
            return f"{self.kind}: {self.detail!r}"
        return self.kind


NORMAL = ExitReason("normal")
"""The actor finished on its own (Erlang ``normal``)."""
SHUTDOWN = ExitReason("shutdown")
"""The actor was asked to stop by its supervisor or owner (Erlang ``shutdown``)."""
KILLED = ExitReason("killed")
"""The actor was cancelled without running ``terminate`` (Erlang ``killed``)."""
NOPROC = ExitReason("noproc")
"""There was no actor to talk to (Erlang ``noproc``)."""


class NameRegistry(Protocol):
    """What a name registry must offer for names (and ``Via`` names) to work.

    :class:`otpy.Registry` implements it; any object with these three methods
    (e.g. a registry keyed by tenant) can be used through :class:`otpy.Via`.
    """

    def register(self, name: Any, ref: Ref) -> None:
        """Bind ``name`` to ``ref``; raise :class:`otpy.errors.NameTaken` if it is bound."""

    def unregister(self, name: Any) -> None:
        """Remove ``name`` (no error if it is not bound)."""

    def whereis(self, name: Any) -> Ref | None:
        """The live actor bound to ``name``, or None."""


@attrs.frozen
class Down:
    """Message delivered to a watcher when the actor it monitors exits.

    The Erlang ``{'DOWN', MonitorRef, process, Pid, Reason}``.  It arrives in
    ``handle_info`` exactly once per monitor, even when the actor was already
    dead when the monitor was set up.
    """

    monitor: Monitor
    ref: Ref
    reason: ExitReason


@attrs.frozen
class Exit:
    """Message delivered to an actor that traps exits when a linked actor exits.

    The Erlang ``{'EXIT', Pid, Reason}``: with ``trap_exits = True`` an actor
    receives this instead of being killed by an abnormal exit of a linked actor.
    """

    ref: Ref
    reason: ExitReason


@attrs.define(eq=False, repr=False)
class Monitor:
    """Handle of one monitor; pass it to ``demonitor`` to cancel it.

    Each ``monitor`` call creates a new one, so two monitors of the same actor
    each get their own :class:`Down`.
    """

    watcher: Ref
    target: Ref
    active: bool = True

    def __repr__(self) -> str:
        return f"<Monitor {self.watcher!r} -> {self.target!r}>"


_ids = itertools.count(1)
_CURRENT: contextvars.ContextVar[Ref | None] = contextvars.ContextVar("otpy_actor", default=None)

_WAKE = object()
"""Mailbox sentinel: wakes a parked actor so it sees a stop request."""

_NONE: frozenset[Any] = frozenset()
"""The empty value of a ref's lazily created sets (links, pending callers).

An empty frozenset compares equal to an empty set and supports the same
reads, so code reading ``ref._links`` or ``ref._callers`` needs no None check;
the writers replace it with a real set on first use.
"""


def current_actor() -> Ref | None:
    """The actor the calling task belongs to, or None for a plain trio task.

    Background tasks started by a server belong to that server, so they can
    ``monitor`` and ``send`` on its behalf.
    """
    return _CURRENT.get()


class Ref:
    """Address of one actor (the Erlang pid): send to it, call it, monitor it.

    A ref stays valid after the actor exits; ``alive`` turns False and
    ``exit_reason`` says why.  Refs compare by identity, so a restarted child
    has a new ref, as a restarted Erlang process has a new pid.  ``parent`` is
    the supervisor that started the actor (None for one started with
    ``otpy.start``), so a supervisor trapping exits can tell an exit signal of
    its own child from one of an outside actor.
    """

    __slots__ = (
        "_callers",
        "_exited",
        "_kill_reason",
        "_links",
        "_monitors",
        "_names",
        "_queue",
        "_scope",
        "_stop_reason",
        "_task",
        "_waiter",
        "_watching",
        "alive",
        "exit_reason",
        "id",
        "label",
        "parent",
        "trap_exits",
    )

    def __init__(self, label: str = "") -> None:
        self.id = next(_ids)
        self.label = label
        self.alive = True
        self.exit_reason: ExitReason | None = None
        self.trap_exits = False
        self.parent: Ref | None = None
        # Created on first use (see the module docstring): None / _NONE until then.
        self._queue: deque[Any] | None = None
        self._waiter: trio.lowlevel.Task | None = None
        self._task: trio.lowlevel.Task | None = None
        self._scope: trio.CancelScope | None = None
        self._stop_reason: ExitReason | None = None
        self._kill_reason: ExitReason | None = None
        self._callers: set[From] | frozenset[From] = _NONE
        self._monitors: dict[Monitor, None] | None = None
        self._watching: dict[Monitor, None] | None = None
        self._links: set[Ref] | frozenset[Ref] = _NONE
        # Replaced, never mutated, by the registries (names are rare).
        self._names: Sequence[tuple[NameRegistry, Hashable]] = ()
        self._exited: trio.Event | None = None

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self._names else (f" {self.label}" if self.label else "")
        state = "" if self.alive else f" exited:{self.exit_reason}"
        return f"<Ref #{self.id}{name}{state}>"

    @property
    def name(self) -> Hashable | None:
        """The first name this actor was registered under, or None."""
        return self._names[0][1] if self._names else None

    # -- mailbox -----------------------------------------------------------------

    def deliver(self, message: Any) -> None:
        """Put ``message`` in the mailbox without blocking; dropped if the actor is dead.

        Dropping mirrors Erlang: sending to a dead pid is not an error, because
        the sender cannot know whether the receiver died a microsecond earlier.
        """
        if not self.alive:
            return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter, outcome.Value(message))
        elif self._queue is not None:
            self._queue.append(message)
        else:
            self._queue = deque((message,))

    async def receive(self) -> Any:
        """Take the next message, waiting for one; only the actor's own task may call this."""
        if self._queue:
            await trio.lowlevel.checkpoint()
            return self._queue.popleft()
        self._waiter = trio.lowlevel.current_task()
        return await trio.lowlevel.wait_task_rescheduled(self._abort_park)

    def _abort_park(self, _: Any) -> trio.lowlevel.Abort:
        """Abort function of a parked receive (a bound method: no closure per wait)."""
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    # -- lifecycle ---------------------------------------------------------------

    def request_stop(self, reason: ExitReason = SHUTDOWN) -> None:
        """Ask the actor to stop gracefully after the message it is handling.

        The actor runs its ``terminate`` and exits with ``reason``.  Returns at
        once; use :meth:`wait` to wait for the exit.
        """
        if not self.alive or self._stop_reason is not None:
            return
        self._stop_reason = reason
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter, outcome.Value(_WAKE))

    def kill(self, reason: ExitReason = KILLED) -> None:
        """Cancel the actor at once (no ``terminate``); it exits with ``reason``.

        Cancels the actor's own cancel scope, so nothing else in the nursery is
        touched.  Returns at once; use :meth:`wait` to wait until it is gone.
        """
        if not self.alive or self._kill_reason is not None:
            return
        self._kill_reason = reason
        if self._scope is not None:
            self._scope.cancel()

    async def wait(self) -> ExitReason:
        """Wait until the actor has exited and return its exit reason.

        Works from any task, actor or not; returns at once for a dead actor.
        """
        if not self.alive:
            await trio.lowlevel.checkpoint()
            assert self.exit_reason is not None
            return self.exit_reason
        if self._exited is None:
            self._exited = trio.Event()
        await self._exited.wait()
        assert self.exit_reason is not None
        return self.exit_reason

    def _attach(self, scope: trio.CancelScope, task: trio.lowlevel.Task) -> None:
        self._scope = scope
        self._task = task
        if self._kill_reason is not None:
            scope.cancel()

    def _exit(self, reason: ExitReason) -> None:
        """Record the exit and tell everyone who needs to know; called once, never awaits."""
        if not self.alive:
            return
        # Release the names while still alive: a registry's whereis only reports
        # live actors.  Unregistering prunes ``_names``; the dead ref keeps them
        # for its repr in exit reports (the registries replace the sequence,
        # never mutate it, so iterating the original here is safe).
        names = self._names
        for registry, name in names:
            if registry.whereis(name) is self:
                registry.unregister(name)
        self._names = names
        self.alive = False
        self.exit_reason = reason
        self._waiter = None
        self._queue = None
        watching = self._watching
        self._watching = None
        for mon in watching or ():
            mon.active = False
            mon.target._unwatch(mon)
        monitors = self._monitors
        self._monitors = None
        for mon in monitors or ():
            mon.active = False
            if mon.watcher._watching is not None:
                mon.watcher._watching.pop(mon, None)
            mon.watcher.deliver(Down(mon, self, reason))
        links = self._links
        self._links = _NONE
        for other in links:
            if isinstance(other._links, set):
                other._links.discard(self)
            _signal_link(other, self, reason)
        callers = self._callers
        self._callers = _NONE
        for from_ in callers:
            from_._fail(ActorExited(self, reason))
        if self._exited is not None:
            self._exited.set()

    def _unwatch(self, mon: Monitor) -> None:
        """Drop ``mon`` from this (target) actor's monitors."""
        if self._monitors is not None:
            self._monitors.pop(mon, None)


def monitor(watcher: Ref, target: Ref) -> Monitor:
    """Make ``watcher`` receive a :class:`Down` when ``target`` exits.

    If the target is already dead, the Down (with its real exit reason) is
    delivered at once, so there is no window in which an exit can be missed.
    """
    mon = Monitor(watcher, target)
    if not target.alive:
        mon.active = False
        assert target.exit_reason is not None
        watcher.deliver(Down(mon, target, target.exit_reason))
        return mon
    if target._monitors is None:
        target._monitors = {}
    target._monitors[mon] = None
    if watcher._watching is None:
        watcher._watching = {}
    watcher._watching[mon] = None
    return mon


def demonitor(mon: Monitor) -> bool:
    """Cancel a monitor; returns False if its Down was already sent.

    A Down that was already delivered stays in the mailbox (as with Erlang
    ``demonitor`` without ``flush``).
    """
    if not mon.active:
        return False
    mon.active = False
    mon.target._unwatch(mon)
    if mon.watcher._watching is not None:
        mon.watcher._watching.pop(mon, None)
    return True


def link(a: Ref, b: Ref) -> None:
    """Link two actors: an abnormal exit of either kills the other (unless it traps exits).

    Linking to an already dead actor behaves as if it had just exited, so the
    link cannot be used to miss a crash.
    """
    if a is b:
        return
    if not b.alive:
        a, b = b, a
    if not a.alive:
        assert a.exit_reason is not None
        _signal_link(b, a, a.exit_reason)
        return
    for one, other in ((a, b), (b, a)):
        links = one._links
        if not isinstance(links, set):
            links = one._links = set()
        links.add(other)


def _signal_link(other: Ref, dead: Ref, reason: ExitReason) -> None:
    """Tell ``other`` that its linked actor ``dead`` exited: an ``Exit`` message or a kill."""
    if other.trap_exits:
        other.deliver(Exit(dead, reason))
    elif reason.abnormal:
        other.kill(ExitReason.crashed(ExitSignal(dead, reason)))


def unlink(a: Ref, b: Ref) -> None:
    """Remove the link between two actors (no error if there is none)."""
    for one, other in ((a, b), (b, a)):
        links = one._links
        if isinstance(links, set):
            links.discard(other)
