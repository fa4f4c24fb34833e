"""Supervisor: OTP restart strategies, intensity and escalation on trio.

A supervisor is a :class:`~otpy.GenServer` whose children run in its own
nursery, each inside the actor wrapper of :mod:`otpy.gen_server`: a child's
crash becomes an *exit reason* delivered to the supervisor as a ``Down``
message, never an exception in the supervisor's nursery.  The supervisor reacts
one message at a time, exactly like OTP's ``supervisor`` process:

* children start in order, each counted as started only when its ``init``
  returned; if one fails to start, the ones already started are stopped in
  reverse order and the supervisor itself fails to start;
* ``one_for_one`` restarts the child that exited, ``one_for_all`` stops the
  others (in reverse order) and restarts all of them in order,
  ``rest_for_one`` does the same for the children started after it;
* more than ``intensity`` restarts within ``period`` seconds make the
  supervisor stop all children and crash with :class:`~otpy.errors.GaveUp`, so
  its own supervisor handles the failure (escalation);
* on shutdown, children stop in reverse order, each given its shutdown time to
  run ``terminate`` before it is cancelled;
* a restart under ``one_for_one`` (and every start of a dynamic supervisor)
  runs in a task of its own, so an ``init`` that hangs does not stop the
  supervisor from serving other requests (see :data:`INLINE_START_WAIT`);
  group restarts and the initial start stay in order inside the supervisor;
* supervisors trap exits: a linked actor's crash is never the supervisor's.

Every start, crash, restart, shutdown and give-up is logged on the
``otpy.supervisor`` logger with ``extra`` fields ``event``, ``supervisor``,
``child_id``, ``ref`` and ``reason``, so log pipelines can filter on them.
"""

from __future__ import annotations

import enum
import logging
import random
import weakref
from collections import deque
from collections.abc import Hashable, Iterable
from typing import Any

import attrs
import trio

from otpy._util import check_int, check_number
from otpy.actor import Down, Exit, Monitor, Ref
from otpy.child_spec import (
    BRUTAL_KILL,
    INFINITY,
    ChildSpec,
    ChildType,
    Restart,
)
from otpy.errors import (
    ChildNotFound,
    ChildRunning,
    DuplicateChild,
    GaveUp,
    InitError,
    InvalidArgument,
    SupervisorError,
    UnexpectedMessage,
)
from otpy.exit_reason import SHUTDOWN, ExitReason
from otpy.gen_server import NO_REPLY, GenServer, start_supervised
from otpy.process import From, call, demonitor, monitor, reply, reply_error

__all__ = [
    "INLINE_START_WAIT",
    "ONE_FOR_ALL",
    "ONE_FOR_ONE",
    "REST_FOR_ONE",
    "ChildCounts",
    "ChildInfo",
    "Strategy",
    "Supervisor",
    "SupervisorBase",
    "count_children",
    "delete_child",
    "restart_child",
    "start_child",
    "terminate_child",
    "which_children",
]

logger = logging.getLogger("otpy.supervisor")

INLINE_START_WAIT = 0.1
"""Seconds a supervisor waits for a background start before it serves its next message.

Long enough for any ``init`` that does not wait on the outside world, short
enough that a hanging one delays the other requests by no more than this.
Starts run in the background for every child of a dynamic supervisor and for
restarts under ``one_for_one``.
"""


class Strategy(enum.Enum):
    """Which children a supervisor restarts when one of them exits."""

    ONE_FOR_ONE = "one_for_one"
    """Only the child that exited."""
    ONE_FOR_ALL = "one_for_all"
    """All children: the others are stopped (reverse order), then all start in order."""
    REST_FOR_ONE = "rest_for_one"
    """The child that exited and every child started after it."""


ONE_FOR_ONE = Strategy.ONE_FOR_ONE
ONE_FOR_ALL = Strategy.ONE_FOR_ALL
REST_FOR_ONE = Strategy.REST_FOR_ONE


@attrs.frozen
class ChildInfo:
    """One row of :func:`which_children`: ``ref`` is None when the child is not running."""

    id: Hashable
    ref: Ref | None
    type: ChildType
    restart: Restart


@attrs.frozen
class ChildCounts:
    """Result of :func:`count_children` (OTP's specs/active/supervisors/workers)."""

    specs: int
    active: int
    supervisors: int
    workers: int


@attrs.define(eq=False)
class Starting:
    """A start running in a task of its own (dynamic children, one_for_one restarts).

    For supervisor subclasses (a :class:`Child`'s ``starting``), not for application code.

    ``scope`` cancels it, ``caller`` gets the reply (None for a restart),
    ``done`` is set once it is over, started or not.
    """

    scope: trio.CancelScope
    caller: From | None
    done: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class Child:
    """A supervisor's record of one child: its spec and what it is doing now.

    For supervisor subclasses (:class:`SupervisorBase` hooks, such as
    :class:`~otpy.DynamicSupervisor`), not for application code, which sees
    :class:`ChildInfo` rows.  ``ref``/``monitor`` are set while the child runs;
    ``failures``/``started_at`` drive its backoff; ``pending`` is the token of
    a scheduled restart (0: none); ``starting`` a start running in a task of
    its own.
    """

    spec: ChildSpec
    ref: Ref | None = None
    monitor: Monitor | None = None
    failures: int = 0
    started_at: float | None = None
    pending: int = 0
    starting: Starting | None = None


@attrs.frozen
class _Which:
    pass


@attrs.frozen
class _Count:
    pass


@attrs.frozen
class StartChild:
    """The request :func:`start_child` sends to a supervisor.

    For supervisor subclasses that handle starts themselves (a dynamic
    supervisor answers it later), not for application code.
    """

    spec: ChildSpec


@attrs.frozen
class _TerminateChild:
    key: Any


@attrs.frozen
class _RestartChild:
    key: Any


@attrs.frozen
class _DeleteChild:
    key: Any


@attrs.frozen(eq=False)
class _Retry:
    child: Child
    token: int


async def which_children(sup: Any) -> list[ChildInfo]:
    """The supervisor's children in start order, with their refs (None if not running)."""
    result: list[ChildInfo] = await call(sup, _Which(), timeout=None)
    return result


async def count_children(sup: Any) -> ChildCounts:
    """How many child specs, running children, supervisors and workers the supervisor has."""
    result: ChildCounts = await call(sup, _Count(), timeout=None)
    return result


async def start_child(sup: Any, spec: ChildSpec) -> Ref:
    """Add and start a child at run time; returns its ref once its ``init`` finished.

    Raises :class:`~otpy.errors.InitError` if the child fails to start,
    :class:`~otpy.errors.DuplicateChild` (static supervisors) or
    :class:`~otpy.errors.MaxChildren` (dynamic ones).  Callable from any task.
    Anything but a :class:`~otpy.ChildSpec` raises
    :class:`~otpy.errors.InvalidArgument` here, before it reaches the supervisor.
    """
    if not isinstance(spec, ChildSpec):
        raise InvalidArgument("spec", spec, "an otpy.ChildSpec")
    result: Ref = await call(sup, StartChild(spec), timeout=None)
    return result


async def terminate_child(sup: Any, key: Any) -> None:
    """Stop a child (by id, or by ref for dynamic supervisors) with its shutdown settings.

    A static supervisor keeps the spec of a non-temporary child, so
    :func:`restart_child` can start it again; a dynamic supervisor forgets it.
    """
    await call(sup, _TerminateChild(key), timeout=None)


async def restart_child(sup: Any, child_id: Any) -> Ref:
    """Start a stopped child of a static supervisor again; returns its new ref."""
    result: Ref = await call(sup, _RestartChild(child_id), timeout=None)
    return result


async def delete_child(sup: Any, child_id: Any) -> None:
    """Remove the spec of a stopped child from a static supervisor."""
    await call(sup, _DeleteChild(child_id), timeout=None)


def live_supervisors() -> list[SupervisorBase]:
    """The supervisors of this process that still exist (for metrics: ``restarts``, ``label``)."""
    return [sup for sup in _LIVE if sup.running]


class SupervisorBase(GenServer):
    """What every supervisor shares: child start/stop, intensity, backoff, reports.

    Supervisors trap exits, as OTP's do: an actor linked to the supervisor
    (a child that links to its parent, or any other actor) does not take it
    down.  An :class:`~otpy.Exit` from one of its children is that child's exit,
    handled once by the strategy (its ``Down`` and its ``Exit`` never count as
    two restarts); one from any other actor is logged and ignored.

    Subclass surface (OTP's "Internal exports": for supervisor subclasses such
    as :class:`Supervisor` and :class:`~otpy.DynamicSupervisor`, not for
    application code).  A subclass keeps its children as :class:`Child`
    records and implements the four hooks ``_children_list()`` (in start
    order), ``_contains(child)``, ``_remove(child)`` and ``await
    _restart(child)`` (its strategy); it may override ``_forget_stopped(child)``
    (what a child that will not run again leaves behind), ``_child_started``
    (called in the child's task the moment its ``init`` returned) and ``await
    _handle_other(request)`` (requests beyond which/count/terminate, such as
    :class:`StartChild`).  It starts children with ``await _start_child(child)``
    (in the supervisor's loop) or ``await _launch(child, caller, event)`` (in a
    task of its own, see :data:`INLINE_START_WAIT`).
    """

    trap_exits = True
    child_type = ChildType.SUPERVISOR

    def __init__(self, *, intensity: int = 3, period: float = 5.0) -> None:
        self.intensity = check_int("intensity", intensity)
        self.period = check_number("period", period, strict=True)
        self._restarts: deque[float] = deque()
        self._by_monitor: dict[Monitor, Child] = {}
        # The running children by ref: finding a child (an exit signal,
        # terminate_child by ref) must not scan every child, or a storm of N
        # exits under one supervisor costs N².
        self._by_ref: dict[Ref, Child] = {}
        self._tokens = 0
        self._rng = random.Random()
        #: Restarts done since this supervisor started (read by metrics).
        self.restarts = 0
        _LIVE.add(self)

    # -- reporting ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True from the start of ``init`` until the supervisor exits (read by metrics)."""
        ref = self._ref
        return ref is not None and ref.alive

    @property
    def label(self) -> str:
        """How this supervisor appears in logs: its registered name, else its ref."""
        ref = self._ref
        if ref is None:
            return type(self).__name__
        return repr(ref.name) if ref.name is not None else repr(ref)

    def _report(
        self,
        level: int,
        event: str,
        message: str,
        child: Child | None,
        reason: ExitReason | None = None,
        ref: Ref | None = None,
        **fields: Any,
    ) -> None:
        """Log one supervisor report; ``message`` uses {child}, {reason}, {ref} and ``fields``."""
        if not logger.isEnabledFor(level):
            return
        child_id = None if child is None else child.spec.id
        extra: dict[str, Any] = {
            "event": event,
            "supervisor": self.label,
            "child_id": child_id,
            "ref": repr(ref) if ref is not None else None,
            "reason": None if reason is None else str(reason),
            **fields,
        }
        text = message.format(child=child_id, reason=reason, ref=ref, **fields)
        error = reason.error if reason is not None else None
        logger.log(
            level,
            "supervisor %s: %s",
            self.label,
            text,
            extra=extra,
            exc_info=error if level >= logging.ERROR and error is not None else None,
        )

    # -- children ----------------------------------------------------------------

    def _children_list(self) -> list[Child]:
        raise NotImplementedError

    def _contains(self, child: Child) -> bool:
        raise NotImplementedError

    def _remove(self, child: Child) -> None:
        raise NotImplementedError

    async def _restart(self, child: Child) -> None:
        raise NotImplementedError

    async def _start_child(
        self,
        child: Child,
        event: str = "child_started",
        *,
        returned: bool = True,
        caller: From | None = None,
    ) -> Ref:
        """Start one child and monitor it; raises InitError (already reported).

        ``returned`` says the failure goes back to a caller (``start_child``,
        ``restart_child``, the supervisor's own start): it is then logged as one
        INFO line without traceback, since the caller has the exception and
        reports it; a failed automatic restart has nobody else to tell and is
        an ERROR with the traceback.  ``caller`` gets the ref as its reply the
        moment the child has started.
        """
        child.pending = 0

        def started(ref: Ref) -> None:
            self._child_started(child, ref, event)
            if caller is not None:
                reply(caller, ref)

        try:
            ref = await start_supervised(
                self.nursery,
                child.spec.start(),
                child.spec.name,
                self.ref,
                child.spec.start_timeout,
                started,
            )
        except Exception as exc:
            # Besides a failing init: a failing factory (bad arguments), a
            # factory that returns no server, a taken name, a start timeout.
            reason = exc.reason if isinstance(exc, InitError) else ExitReason.crashed(exc)
            self._report(
                logging.INFO if returned else logging.ERROR,
                "child_start_failed",
                "child {child!r} failed to start: {reason}",
                child,
                reason,
            )
            if isinstance(exc, InitError):
                raise
            raise InitError(child.spec.id, reason) from exc
        return ref

    def _child_started(self, child: Child, ref: Ref, event: str) -> None:
        """Book a child whose init just returned (runs in the child's task, never awaits)."""
        child.ref = ref
        self._by_ref[ref] = child
        child.started_at = trio.current_time()
        mon = monitor(ref, self.ref)
        child.monitor = mon
        self._by_monitor[mon] = child
        self._report(
            logging.INFO, event, "child {child!r} " + event[6:] + " as {ref!r}", child, None, ref
        )

    async def _shutdown_child(self, child: Child, reason: ExitReason = SHUTDOWN) -> ExitReason:
        """Stop one running child: graceful stop within its shutdown time, then cancel."""
        ref = child.ref
        assert ref is not None
        child.ref = None
        self._by_ref.pop(ref, None)
        if child.monitor is not None:
            demonitor(child.monitor)
            self._by_monitor.pop(child.monitor, None)
            child.monitor = None
        shutdown = child.spec.shutdown
        if shutdown is BRUTAL_KILL:
            ref.kill()
        else:
            ref.request_stop(reason)
            if shutdown is not INFINITY:
                assert isinstance(shutdown, float)
                with trio.move_on_after(shutdown):
                    await ref.wait()
                if ref.alive:
                    self._report(
                        logging.WARNING,
                        "child_shutdown_timeout",
                        "child {child!r} did not stop within {shutdown} s; cancelling it",
                        child,
                        None,
                        ref,
                        shutdown=shutdown,
                    )
                    ref.kill()
        with trio.CancelScope(shield=True):
            exit_reason = await ref.wait()
        self._report(
            logging.INFO,
            "child_shutdown",
            "child {child!r} shut down ({reason})",
            child,
            exit_reason,
            ref,
        )
        return exit_reason

    async def _shutdown_running(self, children: list[Child]) -> None:
        """Stop the running members of ``children`` in reverse order."""
        for child in reversed(children):
            if child.ref is not None:
                await self._shutdown_child(child)

    def _record_restart(self) -> bool:
        """Count one restart; False if that exceeds ``intensity`` within ``period``."""
        now = trio.current_time()
        self.restarts += 1
        restarts = self._restarts
        restarts.append(now)
        while restarts and restarts[0] <= now - self.period:
            restarts.popleft()
        return len(restarts) <= self.intensity

    async def _launch(self, child: Child, caller: From | None, event: str) -> None:
        """Start ``child`` in a background task; ``caller`` (if any) gets the reply.

        Waits up to :data:`INLINE_START_WAIT` seconds for the start to finish.
        """
        starting = Starting(trio.CancelScope(), caller)
        child.starting = starting
        child.pending = 0
        self.start_soon(self._start_in_task, child, starting, event)
        with trio.move_on_after(INLINE_START_WAIT):
            await starting.done.wait()

    async def _start_in_task(self, child: Child, starting: Starting, event: str) -> None:
        """The background start: reply, forget or schedule a retry once it is over."""
        error: InitError | None = None
        with starting.scope:
            try:
                await self._start_child(
                    child, event, returned=starting.caller is not None, caller=starting.caller
                )
            except InitError as exc:
                error = exc
        child.starting = None
        starting.done.set()
        if child.ref is not None:
            return  # started (and replied to) the moment its init returned
        cancelled = error is None  # by the supervisor stopping or giving up
        if starting.caller is not None:
            reply_error(starting.caller, error or InitError(child.spec.id, SHUTDOWN))
            self._remove(child)
        elif not cancelled and self._contains(child):
            self._schedule(child, after_run=False)  # a failed restart: retried, and counted

    async def _cancel_starts(self) -> None:
        """Cancel the starts running in tasks of their own and wait until they are over.

        After this no child can become running behind the supervisor's back,
        so stopping "all running children" really stops all of them.
        """
        startings = [c.starting for c in self._children_list() if c.starting is not None]
        for starting in startings:
            starting.scope.cancel()
        for starting in startings:
            await starting.done.wait()

    async def _settle(self, child: Child) -> None:
        """Cancel ``child``'s start in progress, if any, and wait until it is over."""
        starting = child.starting
        if starting is not None:
            starting.scope.cancel()
            await starting.done.wait()

    async def _give_up(self, child: Child) -> None:
        self._report(
            logging.ERROR,
            "supervisor_gave_up",
            "more than {intensity} restarts in {period} s (last: child {child!r}); giving up",
            child,
            None,
            None,
            intensity=self.intensity,
            period=self.period,
        )
        error = GaveUp(self.label, child.spec.id, self.intensity, self.period)
        await self._cancel_starts()
        await self._shutdown_running(self._children_list())
        raise error

    async def _start_group(self, group: list[Child]) -> None:
        """(Re)start the non-running members of ``group`` in order; retry later on failure."""
        for child in group:
            if child.ref is not None or not self._contains(child):
                continue
            try:
                await self._start_child(child, "child_restarted", returned=False)
            except InitError:
                self._schedule(child, after_run=False)
                return

    def _schedule(self, child: Child, after_run: bool) -> None:
        """Restart ``child`` later: after its backoff delay, or as the next message.

        ``after_run`` says the child was running (rather than failing to start):
        only then can a long healthy run reset its backoff.
        """
        self._tokens += 1
        child.pending = token = self._tokens
        backoff = child.spec.backoff
        if backoff is None:
            self.ref.deliver(_Retry(child, token))
            return
        started_at = child.started_at
        healthy = started_at is not None and (
            trio.current_time() - started_at >= backoff.healthy_after
        )
        if after_run and healthy:
            child.failures = 0
        child.failures += 1
        delay = backoff.delay(child.failures, self._rng)
        self._report(
            logging.INFO,
            "child_restart_scheduled",
            "child {child!r} restarts in {delay:.3f} s",
            child,
            None,
            None,
            delay=delay,
        )
        self.start_soon(self._timer, child, token, delay)

    async def _timer(self, child: Child, token: int, delay: float) -> None:
        await trio.sleep(delay)
        self.ref.deliver(_Retry(child, token))

    async def _restart_now(self, child: Child) -> None:
        if not self._record_restart():
            await self._give_up(child)
        await self._restart(child)

    async def _child_exited(self, child: Child, reason: ExitReason) -> None:
        if child.ref is not None:
            self._by_ref.pop(child.ref, None)
        child.ref = None
        child.monitor = None
        if reason.abnormal:
            self._report(
                logging.ERROR, "child_crashed", "child {child!r} crashed: {reason}", child, reason
            )
        else:
            self._report(
                logging.INFO, "child_exited", "child {child!r} exited ({reason})", child, reason
            )
        restart = child.spec.restart
        if restart is Restart.PERMANENT or (restart is Restart.TRANSIENT and reason.abnormal):
            if child.spec.backoff is not None:
                self._schedule(child, after_run=True)
            else:
                await self._restart_now(child)
        else:
            self._forget_stopped(child)

    # -- messages ----------------------------------------------------------------

    async def handle_info(self, message: Any) -> None:
        """Handles child ``Down``/``Exit`` messages and scheduled restarts; ignores stale ones."""
        if type(message) is Down:
            child = self._by_monitor.pop(message.monitor, None)
            if child is not None and child.ref is message.ref:
                await self._child_exited(child, message.reason)
        elif type(message) is Exit:
            await self._exit_signal(message)
        elif type(message) is _Retry:
            child = message.child
            if (
                child.pending == message.token
                and child.ref is None
                and child.starting is None
                and self._contains(child)
            ):
                child.pending = 0
                await self._restart_now(child)
        else:
            await super().handle_info(message)

    async def _exit_signal(self, message: Exit) -> None:
        """An exit signal from a linked actor: a child's exit, or an outsider's (ignored).

        A child's ``Down`` is delivered before its ``Exit`` (both are sent when
        it dies), so the ``Down`` normally handled the exit already and the
        ``Exit`` is dropped: the restart is counted once.
        """
        ref = message.ref
        if ref.parent is self._ref:
            child = self._by_ref.get(ref)
            if child is not None:  # not seen as a Down yet
                if child.monitor is not None:
                    demonitor(child.monitor)
                    self._by_monitor.pop(child.monitor, None)
                await self._child_exited(child, message.reason)
            return
        self._report(
            logging.WARNING if message.reason.abnormal else logging.DEBUG,
            "exit_signal_ignored",
            "ignored the exit of linked actor {ref!r} ({reason}): it is not a child",
            None,
            message.reason,
            ref,
        )

    def _find(self, key: Any) -> Child:
        child = self._by_ref.get(key) if type(key) is Ref else self._find_id(key)
        if child is None:
            raise ChildNotFound(f"supervisor {self.label} has no child {key!r}")
        return child

    def _find_id(self, child_id: Any) -> Child | None:
        """The first child whose spec has ``child_id``, or None."""
        for child in self._children_list():
            if child.spec.id == child_id:
                return child
        return None

    def _info(self) -> list[ChildInfo]:
        return [
            ChildInfo(c.spec.id, c.ref, c.spec.type, c.spec.restart) for c in self._children_list()
        ]

    def _counts(self) -> ChildCounts:
        children = self._children_list()
        sups = sum(1 for c in children if c.spec.type is ChildType.SUPERVISOR)
        return ChildCounts(
            specs=len(children),
            active=sum(1 for c in children if c.ref is not None),
            supervisors=sups,
            workers=len(children) - sups,
        )

    async def handle_call(self, request: Any, from_: From) -> Any:
        """Management requests (which/count/start/terminate/restart/delete child)."""
        try:
            return await self._handle_request(request)
        except (SupervisorError, InitError, UnexpectedMessage) as exc:
            reply_error(from_, exc)
        return NO_REPLY

    async def _handle_request(self, request: Any) -> Any:
        kind = type(request)
        if kind is _Which:
            return self._info()
        if kind is _Count:
            return self._counts()
        if kind is _TerminateChild:
            child = self._find(request.key)
            await self._settle(child)  # a restart in flight: cancelled, never leaked
            if child.ref is not None:
                await self._shutdown_child(child)
            child.pending = 0
            self._forget_stopped(child)
            return None
        return await self._handle_other(request)

    def _forget_stopped(self, child: Child) -> None:
        """Drop the spec of a stopped child that will not run again (here: a temporary one)."""
        if child.spec.restart is Restart.TEMPORARY:
            self._remove(child)

    async def _handle_other(self, request: Any) -> Any:
        raise UnexpectedMessage(f"supervisor {self.label} does not handle {request!r}")

    async def terminate(self, reason: ExitReason) -> None:
        """Cancel starts in progress, then stop all running children in reverse start order."""
        await self._cancel_starts()
        await self._shutdown_running(self._children_list())


#: Every supervisor instance, weakly (a stopped supervisor disappears with its object).
_LIVE: weakref.WeakSet[SupervisorBase] = weakref.WeakSet()


class Supervisor(SupervisorBase):
    """A static supervisor: a list of child specs and a restart strategy.

    ``intensity``/``period`` default to Elixir's 3 restarts in 5 s; OTP's 1
    restart in 5 s would be too strict for most Python services.  Use
    :meth:`child_spec` to nest it under another supervisor
    (``Supervisor.child_spec(children, id="db")``).
    """

    def __init__(
        self,
        children: Iterable[ChildSpec],
        *,
        strategy: Strategy | str = Strategy.ONE_FOR_ONE,
        intensity: int = 3,
        period: float = 5.0,
    ) -> None:
        super().__init__(intensity=intensity, period=period)
        try:
            self.strategy = Strategy(strategy)
        except ValueError:
            choices = ", ".join(repr(s.value) for s in Strategy)
            raise InvalidArgument("strategy", strategy, f"one of {choices}") from None
        # By id, in start order: adding, finding and removing a child are
        # O(1), so a supervisor of N children is built in O(N), not O(N²).
        self._children: dict[Hashable, Child] = {}
        for spec in children:
            if not isinstance(spec, ChildSpec):
                raise InvalidArgument("children", spec, "otpy.ChildSpec values")
            self._add(spec)

    which_children = staticmethod(which_children)
    count_children = staticmethod(count_children)
    start_child = staticmethod(start_child)
    terminate_child = staticmethod(terminate_child)
    restart_child = staticmethod(restart_child)
    delete_child = staticmethod(delete_child)

    def __repr__(self) -> str:
        return f"<Supervisor {self.strategy.value} {list(self._children)}>"

    def _add(self, spec: ChildSpec) -> Child:
        if spec.id in self._children:
            raise DuplicateChild(f"a child with id {spec.id!r} already exists")
        child = self._children[spec.id] = Child(spec)
        return child

    def _children_list(self) -> list[Child]:
        return list(self._children.values())

    def _contains(self, child: Child) -> bool:
        return self._children.get(child.spec.id) is child

    def _find_id(self, child_id: Any) -> Child | None:
        return self._children.get(child_id)

    def _remove(self, child: Child) -> None:
        if self._children.get(child.spec.id) is child:
            del self._children[child.spec.id]

    async def init(self) -> None:
        """Start the children in order; on a failure stop the started ones and fail."""
        for child in self._children_list():
            try:
                await self._start_child(child)
            except InitError:
                await self._shutdown_running(self._children_list())
                raise

    async def _restart(self, child: Child) -> None:
        if self.strategy is Strategy.ONE_FOR_ONE:
            # Alone in its group: restarted in the background, so a hanging
            # init does not keep the supervisor from serving other requests.
            await self._launch(child, None, "child_restarted")
            return
        group = self._children_list()
        if self.strategy is Strategy.REST_FOR_ONE:
            group = group[group.index(child) :]
        for other in reversed(group):
            if other.ref is not None:
                await self._shutdown_child(other)
                self._forget_stopped(other)
        await self._start_group(group)

    def _find_stopped(self, key: Any) -> Child:
        child = self._find(key)
        if child.starting is not None:
            raise ChildRunning(f"child {child.spec.id!r} is restarting; terminate it first")
        if child.ref is not None:
            raise ChildRunning(f"child {child.spec.id!r} is running; terminate it first")
        return child

    async def _handle_other(self, request: Any) -> Any:
        kind = type(request)
        if kind is StartChild:
            child = self._add(request.spec)
            try:
                return await self._start_child(child)
            except InitError:
                self._remove(child)
                raise
        if kind is _RestartChild:
            return await self._start_child(self._find_stopped(request.key), "child_restarted")
        if kind is _DeleteChild:
            self._remove(self._find_stopped(request.key))
            return None
        return await super()._handle_other(request)
