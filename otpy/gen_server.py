"""GenServer: the OTP generic server as a Python behaviour class, plus the process API.

Subclass :class:`GenServer`, keep state on ``self``, and implement the handlers
you need.  The server handles one message at a time, so its state needs no
locks.  Start it with :func:`start` (standalone, in any nursery) or under a
supervisor through a :class:`~otpy.ChildSpec`; talk to it with :func:`call`,
:func:`cast` and :func:`send` from any trio task, actor or not.

Lifecycle of a server, and why it is shaped this way:

1. ``init()`` runs inside the server's own task.  The starter waits for it
   (``nursery.start`` semantics, OTP's ``start_link``), so "started" means
   "initialised"; if it raises, the starter gets :class:`~otpy.errors.InitError`.
2. Messages are handled in arrival order by ``handle_call`` / ``handle_cast`` /
   ``handle_info``.
3. On a graceful stop (``self.stop()``, ``otpy.stop``, a supervisor's shutdown)
   ``terminate(reason)`` runs while the server's background tasks are still
   alive, then they are cancelled.  On a crash the background tasks are
   cancelled first (trio's nursery semantics), then ``terminate`` runs.  On a
   kill (brutal kill, expired shutdown timeout, cancellation) nothing runs.

Each server owns a nursery (``self.nursery`` / ``self.start_soon``) for
background tasks such as a socket reader: their lifetime is the server's, and
an exception in one of them crashes the server with that exception as reason.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, ClassVar, Final

import outcome
import trio

from otpy import actor as _actor
from otpy._util import check_bool, check_number, check_timeout, unwrap_group
from otpy.actor import _CURRENT, _NONE, _WAKE, NORMAL, ExitReason, Monitor, Ref
from otpy.child_spec import Backoff, ChildSpec, ChildType, Restart, Shutdown
from otpy.errors import (
    ActorExited,
    CallingSelf,
    CallTimeout,
    InitError,
    NotAnActor,
    StartTimeout,
    UnexpectedMessage,
)
from otpy.registry import register, resolve, whereis

__all__ = [
    "NO_REPLY",
    "From",
    "GenServer",
    "TaskServer",
    "Timer",
    "call",
    "cast",
    "demonitor",
    "link",
    "monitor",
    "reply",
    "reply_error",
    "send",
    "start",
    "stop",
    "unlink",
]

logger = logging.getLogger("otpy.gen_server")

DEFAULT_CALL_TIMEOUT: Final = 5.0
"""Seconds a call waits for its reply by default (Erlang's 5000 ms)."""


class _NoReply:
    def __repr__(self) -> str:
        return "otpy.NO_REPLY"


NO_REPLY: Final = _NoReply()
"""Return this from ``handle_call`` to reply later with :func:`reply` (``{noreply, State}``)."""


class From:
    """The caller of one pending call: keep it to reply later with :func:`reply`.

    A reply is delivered at most once; replying to a caller that has timed out
    or was cancelled is silently ignored (the caller has moved on).
    """

    __slots__ = ("_done", "_target", "_task", "_timers", "request")

    def __init__(self, request: Any, task: trio.lowlevel.Task, target: Ref) -> None:
        self.request = request
        self._task = task
        self._target = target
        self._done = False
        self._timers: dict[From, float] | None = None

    def __repr__(self) -> str:
        return f"<From {self._task.name} -> {self._target!r}>"

    @property
    def pending(self) -> bool:
        """True while the caller still waits for a reply."""
        return not self._done

    def _finish(self) -> None:
        self._done = True
        target = self._target
        callers = target._callers
        if isinstance(callers, set):
            callers.discard(self)
            if not callers:
                target._callers = _NONE  # an idle server holds no empty set
        timers = self._timers
        if timers is not None:
            self._timers = None
            timers.pop(self, None)

    def _resolve(self, result: outcome.Outcome[Any]) -> None:
        if self._done:
            return
        self._finish()
        trio.lowlevel.reschedule(self._task, result)

    def _fail(self, error: BaseException) -> None:
        self._resolve(outcome.Error(error))

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self._finish()
        return trio.lowlevel.Abort.SUCCEEDED


class _CallTimers:
    """Call deadlines of one trio run, enforced by a single system task.

    A cancel scope per call would cost a third of a call round trip.  Instead
    every pending call with a timeout sits in an insertion-ordered dict per
    timeout value; because the clock only moves forward, each dict is also
    ordered by deadline, so adding and removing a call is O(1) and the timer
    task only looks at the head of each dict.  The timer sleeps until the
    earliest deadline it knows of and is woken (its scope's deadline moved
    earlier) only when a new call would expire before that; in a steady stream
    of calls with the same timeout it wakes about once per timeout period.
    """

    def __init__(self) -> None:
        self.queues: dict[float, dict[From, float]] = {}
        self.wake_at = math.inf
        self.scope = trio.CancelScope()

    def add(self, from_: From, timeout: float) -> None:
        deadline = trio.current_time() + timeout
        queue = self.queues.get(timeout)
        if queue is None:
            queue = self.queues[timeout] = {}
        queue[from_] = deadline
        from_._timers = queue
        if deadline < self.wake_at:
            self.wake_at = deadline
            self.scope.deadline = deadline

    async def run(self) -> None:
        while True:
            with self.scope:
                await trio.sleep_forever()
            self.scope = trio.CancelScope()
            now = trio.current_time()
            wake_at = math.inf
            for timeout, queue in list(self.queues.items()):
                while queue:
                    from_, deadline = next(iter(queue.items()))
                    if deadline > now:
                        wake_at = min(wake_at, deadline)
                        break
                    from_._fail(CallTimeout(from_._target, from_.request, timeout))
                if not queue:
                    # Computed timeouts (a remaining deadline) are all distinct:
                    # keeping their emptied queues would grow this dict forever.
                    del self.queues[timeout]
            self.wake_at = wake_at
            self.scope.deadline = wake_at


_TIMERS: trio.lowlevel.RunVar[_CallTimers] = trio.lowlevel.RunVar("otpy_call_timers")


def _timers() -> _CallTimers:
    try:
        return _TIMERS.get()
    except LookupError:
        timers = _CallTimers()
        _TIMERS.set(timers)
        trio.lowlevel.spawn_system_task(timers.run, name="otpy call timeouts")
        return timers


class Timer:
    """Handle of a :meth:`GenServer.send_after` timer (Erlang's TRef)."""

    __slots__ = ("_fired", "_scope")

    def __init__(self, scope: trio.CancelScope) -> None:
        self._scope = scope
        self._fired = False

    def cancel(self) -> bool:
        """Stop the timer; False if the message was already sent."""
        if self._fired or self._scope.cancel_called:
            return False
        self._scope.cancel()
        return True


class _Cast:
    __slots__ = ("request",)

    def __init__(self, request: Any) -> None:
        self.request = request


def reply(from_: From, value: Any) -> None:
    """Reply to a call deferred with :data:`NO_REPLY` (``gen_server:reply``)."""
    from_._resolve(outcome.Value(value))


def reply_error(from_: From, error: BaseException) -> None:
    """Make the caller of a pending call raise ``error``, without crashing the server.

    Use it for errors that belong to the caller (bad request, overload), where
    crashing the server would be wrong.
    """
    from_._fail(error)


# A per-call timeout is the gen_server:call contract, hence the noqa.
async def call(
    target: Any,
    request: Any,
    timeout: float | None = DEFAULT_CALL_TIMEOUT,  # noqa: ASYNC109
) -> Any:
    """Send ``request`` to a server's ``handle_call`` and wait for the reply.

    ``target`` is a ref, a registered name or a ``Via``.  Raises
    :class:`~otpy.errors.ActorExited` (with the exit reason) as soon as the
    server dies or if it is already dead, :class:`~otpy.errors.NoProcess` for
    an unknown name, and :class:`~otpy.errors.CallTimeout` when no reply came
    within ``timeout`` seconds (None: wait forever).  Works from any task.
    A ``NaN`` timeout raises :class:`~otpy.errors.InvalidArgument` (it would
    otherwise fire at another call's deadline); a timeout <= 0 has already run
    out, so the call raises ``CallTimeout`` at once.
    """
    if timeout is not None and (type(timeout) is not float or timeout != timeout):
        # Off the fast path: ints are converted, NaN and non-numbers refused.
        timeout = check_timeout("call timeout", timeout, allow_negative=True)
    ref = target if type(target) is Ref else resolve(target)
    task = trio.lowlevel.current_task()
    if not ref.alive:
        await trio.lowlevel.checkpoint()
        assert ref.exit_reason is not None
        raise ActorExited(ref, ref.exit_reason)
    if ref._task is task:
        raise CallingSelf(f"{ref!r} called itself from its own message loop; this would deadlock")
    from_ = From(request, task, ref)
    if timeout is not None and timeout != math.inf:
        if timeout <= 0:
            await trio.lowlevel.checkpoint()
            raise CallTimeout(ref, request, timeout)
        _timers().add(from_, timeout)
    callers = ref._callers
    if isinstance(callers, set):
        callers.add(from_)
    else:
        ref._callers = {from_}
    ref.deliver(from_)
    return await trio.lowlevel.wait_task_rescheduled(from_._abort)


def cast(target: Any, request: Any) -> None:
    """Send ``request`` to a server's ``handle_cast`` without waiting (``gen_server:cast``).

    Like Erlang's cast it never fails: a dead server or an unknown name drops
    the request.  Use :func:`call` when you need to know it arrived.
    """
    ref = target if type(target) is Ref else whereis(target)
    if ref is not None:
        ref.deliver(_Cast(request))


def send(target: Any, message: Any) -> None:
    """Send ``message`` to an actor's ``handle_info`` (Erlang's ``!``).

    Sending to a dead ref is silently dropped; an unknown *name* raises
    :class:`~otpy.errors.NoProcess`, as ``Name ! Msg`` raises ``badarg``.
    """
    ref = target if type(target) is Ref else resolve(target)
    ref.deliver(message)


async def stop(
    target: Any,
    reason: ExitReason = NORMAL,
    timeout: float | None = None,  # noqa: ASYNC109 - gen_server:stop takes a timeout too
) -> ExitReason:
    """Stop a server gracefully (``gen_server:stop``) and return its exit reason.

    The server finishes the message it is handling, runs ``terminate(reason)``
    and exits.  Raises :class:`~otpy.errors.CallTimeout` if it has not exited
    within ``timeout`` seconds (it keeps stopping).  A ``NaN`` or negative
    timeout raises :class:`~otpy.errors.InvalidArgument` before anything is stopped.
    """
    timeout = check_timeout("stop timeout", timeout)
    ref = resolve(target)
    ref.request_stop(reason)
    if ref._task is trio.lowlevel.current_task():
        return reason
    if timeout is None:
        return await ref.wait()
    with trio.move_on_after(timeout):
        return await ref.wait()
    raise CallTimeout(target, "stop", timeout)


def _watcher(watcher: Ref | None) -> Ref:
    watcher = watcher or _CURRENT.get()
    if watcher is None:
        raise NotAnActor(
            "monitor/link need an actor on the calling side; call it from a server "
            "(or its background tasks), or wait on ref.wait() from a plain task"
        )
    return watcher


def monitor(target: Any, watcher: Ref | None = None) -> Monitor:
    """Monitor ``target``: the watcher (default: the calling actor) gets a ``Down`` on exit.

    An unknown name produces an immediate ``Down`` with reason ``noproc``, as in Erlang.
    """
    me = _watcher(watcher)
    ref = target if type(target) is Ref else whereis(target)
    if ref is None:
        ghost = Ref(f"noproc:{target!r}")
        ghost._exit(_actor.NOPROC)
        ref = ghost
    return _actor.monitor(me, ref)


def demonitor(mon: Monitor) -> bool:
    """Cancel a monitor; False if its ``Down`` was already delivered."""
    return _actor.demonitor(mon)


def link(target: Any, watcher: Ref | None = None) -> None:
    """Link the calling actor (or ``watcher``) with ``target`` both ways.

    An abnormal exit of either kills the other with
    :class:`~otpy.errors.ExitSignal` as reason, unless it sets
    ``trap_exits = True`` and so receives an :class:`~otpy.Exit` message instead.
    Within trio, prefer structure (a shared nursery, a supervisor) when it fits;
    links are for actors whose lifetimes are tied but who live in different trees.
    """
    _actor.link(_watcher(watcher), resolve(target))


def unlink(target: Any, watcher: Ref | None = None) -> None:
    """Remove a link created with :func:`link`."""
    ref = target if type(target) is Ref else whereis(target)
    if ref is not None:
        _actor.unlink(_watcher(watcher), ref)


class GenServer:
    """Base class of servers: override the handlers, keep state on ``self``.

    Handlers are coroutines and run one at a time.  ``handle_call`` returns the
    reply (or :data:`NO_REPLY` to reply later with :func:`reply`); raising from
    any handler crashes the server, its callers get
    :class:`~otpy.errors.ActorExited` at once, and its supervisor decides what
    happens next.  Subclasses need not call ``super().__init__()``.
    """

    trap_exits: ClassVar[bool] = False
    """Set True to receive :class:`~otpy.Exit` messages instead of dying with linked actors."""

    _ref: Ref | None = None
    _nursery: trio.Nursery | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Reject handlers written as plain ``def`` when the class is defined, not at run time."""
        super().__init_subclass__(**kwargs)
        for callback in ("init", "handle_call", "handle_cast", "handle_info", "terminate"):
            fn = cls.__dict__.get(callback)
            if fn is not None and not inspect.iscoroutinefunction(fn):
                raise TypeError(
                    f"{cls.__name__}.{callback} must be a coroutine function (async def)"
                )

    # -- behaviour callbacks -----------------------------------------------------

    async def init(self) -> None:
        """Prepare the server's state; the starter waits until this returns.

        Raise to refuse to start (the starter gets
        :class:`~otpy.errors.InitError`).  Background tasks started here run as
        soon as init returns.
        """

    async def handle_call(self, request: Any, from_: From) -> Any:
        """Answer a :func:`call`; the return value is the reply.

        The default raises :class:`~otpy.errors.UnexpectedMessage` (crashing the
        server), like an unmatched ``handle_call`` clause.
        """
        raise UnexpectedMessage(f"{type(self).__name__} does not handle call {request!r}")

    async def handle_cast(self, request: Any) -> None:
        """Handle a :func:`cast`.  The default raises :class:`~otpy.errors.UnexpectedMessage`."""
        raise UnexpectedMessage(f"{type(self).__name__} does not handle cast {request!r}")

    async def handle_info(self, message: Any) -> None:
        """Handle any other message (:func:`send`, ``Down``, ``Exit``, timers).

        The default logs and drops it, as OTP's default does, so that a stray
        message never crashes a server.
        """
        logger.warning(
            "%r dropped unexpected message %r",
            self._ref,
            message,
            extra={"event": "unexpected_message", "actor": repr(self._ref)},
        )

    async def terminate(self, reason: ExitReason) -> None:
        """Clean up before the server exits (close sockets, flush buffers).

        Runs after a graceful stop or a crash, not after a kill; a supervisor
        cancels it when the child's shutdown time is up.
        """

    # -- helpers for implementations -------------------------------------------

    @property
    def ref(self) -> Ref:
        """This server's ref (available from ``init`` on)."""
        if self._ref is None:
            raise RuntimeError(f"{type(self).__name__} has not been started")
        return self._ref

    @property
    def nursery(self) -> trio.Nursery:
        """The server's own nursery: tasks in it live and die with the server."""
        if self._nursery is None:
            raise RuntimeError(f"{type(self).__name__} has not been started")
        return self._nursery

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: Any = None) -> None:
        """Run a background task tied to this server (a crash in it crashes the server)."""
        self.nursery.start_soon(fn, *args, name=name)

    async def start_task(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, name: Any = None
    ) -> Any:
        """Like :meth:`start_soon` but waits for ``task_status.started()`` (``nursery.start``)."""
        return await self.nursery.start(fn, *args, name=name)

    def stop(self, reason: ExitReason = NORMAL) -> None:
        """Stop this server after the current message (from a handler or a background task)."""
        self.ref.request_stop(reason)

    def send_after(self, delay: float, message: Any, target: Any = None) -> Timer:
        """Deliver ``message`` to ``target`` (default: this server) after ``delay`` seconds.

        Erlang's ``erlang:send_after``: the timer is a background task of this
        server, so it dies with the server; ``Timer.cancel()`` stops it.  The
        message arrives in ``handle_info`` like any other.  A ``NaN`` or
        negative ``delay`` raises :class:`~otpy.errors.InvalidArgument` here,
        in the caller, instead of crashing the server when the timer starts.
        """
        check_number("send_after delay", delay, allow_infinity=True)
        timer = Timer(trio.CancelScope())
        dest = self.ref if target is None else target

        async def fire() -> None:
            with timer._scope:
                await trio.sleep(delay)
                timer._fired = True
                ref = dest if type(dest) is Ref else whereis(dest)
                if ref is not None:
                    ref.deliver(message)

        self.nursery.start_soon(fire, name=f"send_after({delay}, {message!r})")
        return timer

    def monitor(self, target: Any) -> Monitor:
        """Monitor ``target``; a :class:`~otpy.Down` arrives in ``handle_info`` when it exits."""
        return monitor(target, self.ref)

    def link(self, target: Any) -> None:
        """Link this server with ``target`` (see :func:`otpy.link`)."""
        link(target, self.ref)

    @classmethod
    def child_spec(
        cls,
        *args: Any,
        id: Hashable | None = None,
        name: Any = None,
        restart: Restart | str = Restart.PERMANENT,
        shutdown: float | Shutdown | str | None = None,
        backoff: Backoff | None = None,
        **kwargs: Any,
    ) -> ChildSpec:
        """A :class:`~otpy.ChildSpec` that builds ``cls(*args, **kwargs)`` on every start.

        ``id`` defaults to the registered name or the class name, so
        ``MyServer.child_spec(arg)`` is all a supervisor needs (Elixir's ``{MyServer, arg}``).
        """
        from otpy.supervisor import SupervisorBase

        kind = ChildType.SUPERVISOR if issubclass(cls, SupervisorBase) else ChildType.WORKER
        extra: dict[str, Any] = {} if shutdown is None else {"shutdown": shutdown}
        return ChildSpec(
            id=id if id is not None else (name if name is not None else cls.__name__),
            start=functools.partial(cls, *args, **kwargs),
            restart=restart,
            type=kind,
            name=name,
            backoff=backoff,
            **extra,
        )

    # -- the message loop --------------------------------------------------------

    async def _loop(self, ref: Ref) -> ExitReason:
        checkpoint = trio.lowlevel.checkpoint
        current_task = trio.lowlevel.current_task
        wait = trio.lowlevel.wait_task_rescheduled
        abort = ref._abort_park
        while True:
            if ref._stop_reason is not None:
                return ref._stop_reason
            queue = ref._queue  # created by the first message that has to wait
            if queue:
                await checkpoint()
                msg = queue.popleft()
            else:
                # Ref.receive inlined: one coroutine frame less per parked actor.
                # An idle actor must not keep its last message (and a caller's
                # From) alive, so the local is cleared before parking.
                msg = None
                ref._waiter = current_task()
                msg = await wait(abort)
            kind = type(msg)
            if kind is From:
                result = await self.handle_call(msg.request, msg)
                if result is not NO_REPLY:
                    msg._resolve(outcome.Value(result))
            elif kind is _Cast:
                await self.handle_cast(msg.request)
            elif msg is _WAKE:
                continue
            else:
                await self.handle_info(msg)


def _split_cancelled(
    exc: BaseException,
) -> tuple[BaseException | None, BaseException | None]:
    """Split an exception into (cancellation part, everything else), unwrapping 1-groups."""
    if isinstance(exc, trio.Cancelled):
        return exc, None
    if isinstance(exc, BaseExceptionGroup):
        cancelled, rest = exc.split(trio.Cancelled)
        return cancelled, None if rest is None else unwrap_group(rest)
    return None, exc


def _is_error(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_error(e) for e in exc.exceptions)
    return isinstance(exc, Exception)


async def _run(
    server: GenServer,
    name: Any,
    linked: bool,
    parent: Ref | None,
    on_started: Callable[[Ref], None] | None = None,
    task_status: trio.TaskStatus[Ref] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The actor task: register, init, loop, terminate; turn any crash into an exit reason.

    ``parent`` is the supervisor of a supervised actor (None otherwise).
    ``on_started`` is called in this task the moment ``init`` has returned,
    before anything else can run, so a supervisor can monitor the child without
    a window in which its crash would go unseen.
    """
    if not isinstance(server, GenServer):
        raise TypeError(
            f"expected a GenServer instance to start, got {server!r}; "
            "a child spec's start must return a new server"
        )
    if server._ref is not None:
        raise RuntimeError(
            f"{server!r} was already started once; build a new instance for every start"
        )
    ref = Ref(type(server).__name__)
    ref.trap_exits = server.trap_exits
    ref.parent = parent
    server._ref = ref
    if name is not None:
        try:
            register(name, ref)
        except BaseException as exc:
            ref._exit(ExitReason.crashed(exc))
            raise
    _CURRENT.set(ref)
    started = False
    terminated = False
    crash: BaseException | None = None
    final = _actor.KILLED
    task = trio.lowlevel.current_task()
    scope: trio.CancelScope | None = None
    try:
        try:
            async with trio.open_nursery() as nursery:
                # The nursery's own cancel scope is the actor's (``kill`` cancels
                # it): a second scope per actor would cost memory and start time.
                scope = nursery.cancel_scope
                ref._attach(scope, task)
                server._nursery = nursery
                await server.init()
                started = True
                if on_started is not None:
                    on_started(ref)
                    on_started = None  # a supervisor's closure: not kept for the actor's life
                task_status.started(ref)
                # The status refers to trio's start-up nursery: an idle actor
                # holding it would keep that nursery alive for nothing.
                del task_status
                final = await server._loop(ref)
                terminated = True
                await server.terminate(final)
                scope.cancel()
        except BaseException as exc:
            cancelled, crash = _split_cancelled(exc)
            if crash is None:
                raise
            final = ExitReason.crashed(crash)
            if not _is_error(crash):
                raise
            if cancelled is not None:
                raise cancelled from None
        if ref._kill_reason is not None and (
            crash is not None or (scope is not None and scope.cancelled_caught)
        ):
            # Killed (or killed while crashing): no terminate, as in OTP.
            if crash is None:
                final = ref._kill_reason
        elif started and not terminated:
            # After a crash (or a cancelled nursery): terminate runs outside the
            # nursery, in a scope of its own that a kill still cancels.
            terminated = True
            with trio.CancelScope() as scope:
                ref._attach(scope, task)
                try:
                    await server.terminate(final)
                except Exception:
                    logger.exception(
                        "%r: terminate raised after a crash",
                        ref,
                        extra={"event": "terminate_failed", "actor": repr(ref)},
                    )
            if scope.cancelled_caught and crash is None:
                final = ref._kill_reason or _actor.KILLED
    finally:
        ref._exit(final)
    if not started:
        raise InitError(server, final) from crash
    error = final.error  # a crash, or an ExitSignal from a linked actor
    if error is not None:
        if linked:
            raise error
        if parent is None:  # a supervisor reports its children's crashes itself
            logger.error(
                "%r crashed: %s",
                ref,
                final,
                exc_info=error,
                extra={"event": "actor_crashed", "actor": repr(ref), "reason": str(final)},
            )


async def start(
    nursery: trio.Nursery,
    server: GenServer,
    *,
    name: Any = None,
    link: bool = True,
    timeout: float | None = None,  # noqa: ASYNC109 - OTP's start_link takes a timeout too
) -> Ref:
    """Start ``server`` as an actor in ``nursery``; return its ref once ``init`` finished.

    ``name`` registers it (a plain name in the current registry, or a ``Via``);
    :class:`~otpy.errors.NameTaken` if the name is held.  If ``init`` raises,
    :class:`~otpy.errors.InitError` is raised here.  With ``link=True`` (the
    default, like ``start_link``) a crash after start propagates into
    ``nursery`` as the original exception (or :class:`~otpy.errors.ExitSignal`
    when a linked actor took it down), so errors never pass silently; with
    ``link=False`` the crash only becomes the exit reason (seen by monitors,
    ``ref.wait()`` and callers) and is logged.  With ``timeout`` (seconds), an
    ``init`` still running then is cancelled and
    :class:`~otpy.errors.StartTimeout` is raised (OTP's ``{timeout, ...}`` start
    option); a ``NaN`` or negative timeout raises
    :class:`~otpy.errors.InvalidArgument`.
    """
    timeout = check_timeout("start timeout", timeout)
    check_bool("link", link)
    return await _start_within(timeout, server, nursery, _run, server, name, link, None)


async def _start_within(
    timeout: float | None,  # noqa: ASYNC109 - the start timeout, applied to nursery.start
    server: Any,
    nursery: trio.Nursery,
    *args: Any,
) -> Ref:
    """``nursery.start(*args)``, cancelled with :class:`StartTimeout` after ``timeout`` s."""
    if timeout is None:
        ref: Ref = await nursery.start(*args)
        return ref
    with trio.move_on_after(timeout):
        ref = await nursery.start(*args)
        return ref
    raise StartTimeout(server, timeout)


async def _start_supervised(
    nursery: trio.Nursery,
    server: GenServer,
    name: Any,
    parent: Ref,
    timeout: float | None = None,  # noqa: ASYNC109 - ChildSpec.start_timeout
    on_started: Callable[[Ref], None] | None = None,
) -> Ref:
    """Start a supervisor's child: crashes are only reported as its exit reason."""
    return await _start_within(
        timeout, server, nursery, _run, server, name, False, parent, on_started
    )


class TaskServer(GenServer):
    """Runs one plain async function as an actor, so it can be supervised.

    The function runs as the server's background task: returning stops the
    server with reason ``normal``, raising crashes it.  With
    ``wait_started=True`` the function is passed a ``task_status`` keyword and
    the server counts as started only once it calls ``task_status.started()``
    (``nursery.start`` semantics); otherwise it counts as started at once.
    """

    def __init__(self, fn: Callable[..., Awaitable[Any]], *args: Any, wait_started: bool = False):
        self._fn = fn
        self._args = args
        self._wait_started = wait_started

    def __repr__(self) -> str:
        return f"<TaskServer {getattr(self._fn, '__name__', self._fn)!r}>"

    async def init(self) -> None:
        """Start the function as a background task (waiting for ``started()`` if asked)."""
        if self._wait_started:
            await self.nursery.start(self._body)
        else:
            self.start_soon(self._body)

    async def _body(self, **task_status: trio.TaskStatus[Any]) -> None:
        # ``task_status`` is passed on only under ``nursery.start`` (wait_started=True).
        await self._fn(*self._args, **task_status)
        self.stop(NORMAL)

    async def handle_call(self, request: Any, from_: From) -> Any:
        """A task has no request protocol: any call is unexpected (and crashes it)."""
        raise UnexpectedMessage(f"task {self!r} does not handle calls ({request!r})")
