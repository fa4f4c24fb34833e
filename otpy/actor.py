"""Actors: refs, mailboxes, monitors and links (exit reasons: :mod:`otpy.exit_reason`).

An actor is one trio task with a mailbox, addressed by a :class:`Ref` (the
Erlang pid).  This module holds the primitives every behaviour builds on; it
knows nothing about GenServer protocols or supervision.  What applications
use is the process API of :mod:`otpy.process` (``call``, ``send``,
``monitor``, ``link``, ...) and :class:`Ref`'s own public methods
(``request_stop``, ``kill``, ``wait``).  The few :class:`Ref` methods marked
"for process runners" (or "for registries") are what :mod:`otpy.process`,
:mod:`otpy.gen_server` and :mod:`otpy.registry` need from a ref (OTP's
"Internal exports"): no other module reaches into a ref's private members.
The old primitives ``otpy.actor.monitor(watcher, target)``, ``demonitor``,
``link`` and ``unlink`` are these methods now; their old names still work,
with a ``DeprecationWarning`` pointing to :mod:`otpy.process`.

Design choices, and why:

* The mailbox is unbounded and delivery never blocks (:meth:`Ref.deliver` is
  a plain method), as in Erlang: a sender can never deadlock on a full
  mailbox, and an exiting actor can notify monitors from a ``finally`` block
  without awaiting.
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
* The runner's hot state (``Ref.task``, ``Ref.stop_reason``) is plain
  attributes, read-only by convention, not properties: the message loop and
  ``call`` read them once per message, where a property call would show in a
  call round trip.
"""

from __future__ import annotations

import contextvars
import itertools
from collections import deque
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import outcome
import trio

from otpy._moved import moved_names
from otpy.errors import ActorExited, ExitSignal
from otpy.exit_reason import KILLED, SHUTDOWN, ExitReason

if TYPE_CHECKING:
    from otpy.process import From

__all__ = [
    "Down",
    "Exit",
    "Monitor",
    "NameRegistry",
    "Ref",
    "current_actor",
]


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
    """Handle of one monitor; pass it to :func:`otpy.demonitor` to cancel it.

    Each ``monitor`` call creates a new one, so two monitors of the same actor
    each get their own :class:`Down`.
    """

    watcher: Ref
    target: Ref
    active: bool = True

    def __repr__(self) -> str:
        return f"<Monitor {self.watcher!r} -> {self.target!r}>"

    def cancel(self) -> bool:
        """Cancel this monitor; False if its Down was already sent.

        For process runners (:func:`otpy.demonitor`), not for application
        code.  A Down that was already delivered stays in the mailbox (as with
        Erlang ``demonitor`` without ``flush``).
        """
        if not self.active:
            return False
        self.active = False
        self.target._unwatch(self)
        if self.watcher._watching is not None:
            self.watcher._watching.pop(self, None)
        return True


_ids = itertools.count(1)
_CURRENT: contextvars.ContextVar[Ref | None] = contextvars.ContextVar("otpy_actor", default=None)


class _NoMessage:
    def __repr__(self) -> str:
        return "otpy.actor.NO_MESSAGE"


NO_MESSAGE: Final = _NoMessage()
"""What a runner gets instead of a message: the mailbox was empty, or a stop woke it.

For process runners: :meth:`Ref.take` returns it when the mailbox is empty
(the task is then parked), and a parked runner is rescheduled with it by
:meth:`Ref.request_stop`, so that it looks at ``Ref.stop_reason`` again.
"""

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

    ``task``, ``stop_reason`` and ``kill_reason`` are read-only: the trio task
    running the actor (None until it runs), the reason of a requested graceful
    stop and the reason of a kill (None until asked).  The methods documented
    "for process runners" are the runtime's own interface between refs,
    :mod:`otpy.process` and :mod:`otpy.gen_server`; application code uses the
    process API instead.
    """

    __slots__ = (
        "_callers",
        "_exited",
        "_links",
        "_monitors",
        "_names",
        "_queue",
        "_scope",
        "_waiter",
        "_watching",
        "alive",
        "exit_reason",
        "id",
        "kill_reason",
        "label",
        "parent",
        "stop_reason",
        "task",
        "trap_exits",
    )

    def __init__(self, label: str = "") -> None:
        self.id = next(_ids)
        self.label = label
        self.alive = True
        self.exit_reason: ExitReason | None = None
        self.trap_exits = False
        self.parent: Ref | None = None
        self.task: trio.lowlevel.Task | None = None
        self.stop_reason: ExitReason | None = None
        self.kill_reason: ExitReason | None = None
        # Created on first use (see the module docstring): None / _NONE until then.
        self._queue: deque[Any] | None = None
        self._waiter: trio.lowlevel.Task | None = None
        self._scope: trio.CancelScope | None = None
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
        return await trio.lowlevel.wait_task_rescheduled(self.abort_wait)

    def take(self) -> Any:
        """The next queued message, or :data:`NO_MESSAGE` after parking the calling task.

        For process runners, not for application code: :meth:`receive`
        without its coroutine frame, so that a message loop holds one frame
        less per parked actor.  On :data:`NO_MESSAGE` the caller must at once
        ``await trio.lowlevel.wait_task_rescheduled(ref.abort_wait)``, which
        returns the next message (or :data:`NO_MESSAGE` after a stop request);
        after a message it must still checkpoint.
        """
        queue = self._queue
        if queue:
            return queue.popleft()
        self._waiter = trio.lowlevel.current_task()
        return NO_MESSAGE

    def abort_wait(self, _: Any) -> trio.lowlevel.Abort:
        """Abort function of a parked receive (a bound method: no closure per wait).

        For process runners: pass it to ``wait_task_rescheduled`` after
        :meth:`take` returned :data:`NO_MESSAGE`.
        """
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    # -- pending calls (for otpy.process) ------------------------------------------

    def deliver_call(self, from_: From) -> None:
        """Deliver a call and remember its caller until it is answered.

        For process runners (:func:`otpy.call`), not for application code.  If
        the actor exits first, the caller fails at once with
        :class:`~otpy.errors.ActorExited` instead of waiting for its timeout.
        Like :meth:`deliver` it does nothing for a dead actor: the caller
        checks ``alive`` first, as ``call`` does, and raises that exit.
        """
        if not self.alive:
            return
        callers = self._callers
        if isinstance(callers, set):
            callers.add(from_)
        else:
            self._callers = {from_}
        # deliver() inlined: a call round trip is measured, and a method layer shows in it.
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter, outcome.Value(from_))
        elif self._queue is not None:
            self._queue.append(from_)
        else:
            self._queue = deque((from_,))

    def drop_call(self, from_: From) -> None:
        """Forget a caller whose call is over (answered, timed out or cancelled).

        For process runners (:class:`otpy.From`), not for application code.
        """
        callers = self._callers
        if isinstance(callers, set):
            callers.discard(from_)
            if not callers:
                self._callers = _NONE  # an idle server holds no empty set

    # -- monitors and links (for otpy.process) -----------------------------------

    def watch(self, target: Ref) -> Monitor:
        """Make this actor receive a :class:`Down` when ``target`` exits.

        For process runners (:func:`otpy.monitor`), not for application code.
        If the target is already dead, the Down (with its real exit reason) is
        delivered at once, so there is no window in which an exit can be missed.
        """
        mon = Monitor(self, target)
        if not target.alive:
            mon.active = False
            assert target.exit_reason is not None
            self.deliver(Down(mon, target, target.exit_reason))
            return mon
        if target._monitors is None:
            target._monitors = {}
        target._monitors[mon] = None
        if self._watching is None:
            self._watching = {}
        self._watching[mon] = None
        return mon

    def link_to(self, other: Ref) -> None:
        """Link this actor and ``other``: an abnormal exit of either kills the other.

        For process runners (:func:`otpy.link`), not for application code.  An
        actor that traps exits gets an :class:`Exit` message instead.  Linking
        to an already dead actor behaves as if it had just exited, so the link
        cannot be used to miss a crash.
        """
        a, b = self, other
        if a is b:
            return
        if not b.alive:
            a, b = b, a
        if not a.alive:
            assert a.exit_reason is not None
            _signal_link(b, a, a.exit_reason)
            return
        for one, peer in ((a, b), (b, a)):
            links = one._links
            if not isinstance(links, set):
                links = one._links = set()
            links.add(peer)

    def unlink_from(self, other: Ref) -> None:
        """Remove the link between this actor and ``other`` (no error if there is none).

        For process runners (:func:`otpy.unlink`), not for application code.
        """
        for one, peer in ((self, other), (other, self)):
            links = one._links
            if isinstance(links, set):
                links.discard(peer)

    # -- names (for registries) ----------------------------------------------------

    def add_name(self, registry: NameRegistry, name: Hashable) -> None:
        """Note that ``registry`` holds this actor as ``name``, to release it on exit.

        For registries (:class:`otpy.Registry`, :func:`otpy.register`), not for
        application code.
        """
        self._names = [*self._names, (registry, name)]

    def drop_name(self, registry: NameRegistry, name: Hashable) -> None:
        """Forget that ``registry`` holds this actor as ``name`` (it was unregistered).

        For registries, not for application code.
        """
        self._names = [(r, n) for (r, n) in self._names if not (r is registry and n == name)]

    # -- lifecycle ---------------------------------------------------------------

    def request_stop(self, reason: ExitReason = SHUTDOWN) -> None:
        """Ask the actor to stop gracefully after the message it is handling.

        The actor runs its ``terminate`` and exits with ``reason``.  Returns at
        once; use :meth:`wait` to wait for the exit.
        """
        if not self.alive or self.stop_reason is not None:
            return
        self.stop_reason = reason
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter, outcome.Value(NO_MESSAGE))

    def kill(self, reason: ExitReason = KILLED) -> None:
        """Cancel the actor at once (no ``terminate``); it exits with ``reason``.

        Cancels the actor's own cancel scope, so nothing else in the nursery is
        touched.  Returns at once; use :meth:`wait` to wait until it is gone.
        """
        if not self.alive or self.kill_reason is not None:
            return
        self.kill_reason = reason
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

    def attach(self, scope: trio.CancelScope) -> None:
        """Run this actor in the calling task, under ``scope`` (what :meth:`kill` cancels).

        For process runners (:mod:`otpy.gen_server`), not for application
        code.  The calling task (and the tasks it starts from now on) see this
        ref as :func:`current_actor`.  Called again with a new scope when the
        runner leaves the first one (``terminate`` after a crash); a kill
        requested before is applied to the new scope at once.
        """
        _CURRENT.set(self)
        self._scope = scope
        self.task = trio.lowlevel.current_task()
        if self.kill_reason is not None:
            scope.cancel()

    def record_exit(self, reason: ExitReason) -> None:
        """Record the exit and tell everyone who needs to know; only the first call counts.

        For process runners, not for application code: a runner calls it once,
        from a ``finally``, when its actor is over.  It never awaits.  Monitors
        get a :class:`Down`, links a signal, pending callers an
        :class:`~otpy.errors.ActorExited`, waiters of :meth:`wait` their answer.
        """
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
            from_.fail(ActorExited(self, reason))
        if self._exited is not None:
            self._exited.set()

    def _unwatch(self, mon: Monitor) -> None:
        """Drop ``mon`` from this (target) actor's monitors."""
        if self._monitors is not None:
            self._monitors.pop(mon, None)


def _signal_link(other: Ref, dead: Ref, reason: ExitReason) -> None:
    """Tell ``other`` that its linked actor ``dead`` exited: an ``Exit`` message or a kill."""
    if other.trap_exits:
        other.deliver(Exit(dead, reason))
    elif reason.abnormal:
        other.kill(ExitReason.crashed(ExitSignal(dead, reason)))


def _monitor(watcher: Ref, target: Ref) -> Monitor:
    return watcher.watch(target)


def _link(a: Ref, b: Ref) -> None:
    a.link_to(b)


def _unlink(a: Ref, b: Ref) -> None:
    a.unlink_from(b)


_moved_primitive = moved_names(
    __name__,
    {
        "monitor": "otpy.process:monitor",
        "demonitor": "otpy.process:demonitor",
        "link": "otpy.process:link",
        "unlink": "otpy.process:unlink",
    },
    stacklevel=3,  # through this module's own __getattr__ below
)
# The old primitives took (watcher, target); otpy.process takes (target, watcher).
_OLD_ORDER = {"monitor": _monitor, "link": _link, "unlink": _unlink}


def __getattr__(name: str) -> Any:
    """``otpy.actor.monitor`` / ``demonitor`` / ``link`` / ``unlink`` moved to :mod:`otpy.process`.

    They warn (through :func:`otpy._moved.moved_names`); the three whose
    argument order differs keep their old order, ``(watcher, target)``.
    """
    new = _moved_primitive(name)
    return _OLD_ORDER.get(name, new)
