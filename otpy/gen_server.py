"""GenServer: the OTP generic server as a Python behaviour class, and its runner.

Subclass :class:`GenServer`, keep state on ``self``, and implement the handlers
you need.  The server handles one message at a time, so its state needs no
locks.  Start it with :func:`start` (standalone, in any nursery) or under a
supervisor through a :class:`~otpy.ChildSpec`; talk to it with the process
API of :mod:`otpy.process` (:func:`~otpy.call`, :func:`~otpy.cast`,
:func:`~otpy.send`) from any trio task, actor or not.  This module is the
behaviour and the task that runs it (OTP's ``gen_server.erl``); the plumbing
it shares with any actor is in :mod:`otpy.process` (OTP's ``gen.erl``).

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
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, ClassVar, Final

import outcome
import trio

# The module, not its names: ``otpy.gen_server.call`` & co. must reach the
# moved-names ``__getattr__`` at the end (and warn), not a re-exported binding.
from otpy import process
from otpy._moved import moved_names
from otpy._util import check_bool, check_number, check_timeout, split_cancelled
from otpy.actor import NO_MESSAGE, Monitor, Ref
from otpy.child_spec import Backoff, ChildSpec, ChildType, Restart, Shutdown
from otpy.errors import InitError, StartTimeout, UnexpectedMessage
from otpy.exit_reason import KILLED, NORMAL, ExitReason
from otpy.registry import register

if TYPE_CHECKING:
    from otpy.process import From, Timer

__all__ = [
    "NO_REPLY",
    "GenServer",
    "TaskServer",
    "start",
]

logger = logging.getLogger("otpy.gen_server")


class _NoReply:
    def __repr__(self) -> str:
        return "otpy.NO_REPLY"


NO_REPLY: Final = _NoReply()
"""Return this from ``handle_call`` to reply later with :func:`~otpy.reply` (OTP's ``noreply``)."""


class GenServer:
    """Base class of servers: override the handlers, keep state on ``self``.

    Handlers are coroutines and run one at a time.  ``handle_call`` returns the
    reply (or :data:`NO_REPLY` to reply later with :func:`~otpy.reply`); raising from
    any handler crashes the server, its callers get
    :class:`~otpy.errors.ActorExited` at once, and its supervisor decides what
    happens next.  Subclasses need not call ``super().__init__()``.
    """

    trap_exits: ClassVar[bool] = False
    """Set True to receive :class:`~otpy.Exit` messages instead of dying with linked actors."""

    child_type: ClassVar[ChildType] = ChildType.WORKER
    """What :meth:`child_spec` declares this server as; supervisors set ``SUPERVISOR``.

    A class attribute rather than an ``issubclass`` test against the
    supervisor classes, which live in a layer above this module.
    """

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
        """Answer a :func:`~otpy.call`; the return value is the reply.

        The default raises :class:`~otpy.errors.UnexpectedMessage` (crashing the
        server), like an unmatched ``handle_call`` clause.
        """
        raise UnexpectedMessage(f"{type(self).__name__} does not handle call {request!r}")

    async def handle_cast(self, request: Any) -> None:
        """Handle a :func:`~otpy.cast`; by default raise :class:`~otpy.errors.UnexpectedMessage`."""
        raise UnexpectedMessage(f"{type(self).__name__} does not handle cast {request!r}")

    async def handle_info(self, message: Any) -> None:
        """Handle any other message (:func:`~otpy.send`, ``Down``, ``Exit``, timers).

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
        timer = process.Timer()
        dest = self.ref if target is None else target
        self.nursery.start_soon(
            timer.run, delay, dest, message, name=f"send_after({delay}, {message!r})"
        )
        return timer

    def monitor(self, target: Any) -> Monitor:
        """Monitor ``target``; a :class:`~otpy.Down` arrives in ``handle_info`` when it exits."""
        return process.monitor(target, self.ref)

    def link(self, target: Any) -> None:
        """Link this server with ``target`` (see :func:`otpy.link`)."""
        process.link(target, self.ref)

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
        extra: dict[str, Any] = {} if shutdown is None else {"shutdown": shutdown}
        return ChildSpec(
            id=id if id is not None else (name if name is not None else cls.__name__),
            start=functools.partial(cls, *args, **kwargs),
            restart=restart,
            type=cls.child_type,
            name=name,
            backoff=backoff,
            **extra,
        )

    # -- the message loop --------------------------------------------------------

    async def _loop(self, ref: Ref) -> ExitReason:
        checkpoint = trio.lowlevel.checkpoint
        wait = trio.lowlevel.wait_task_rescheduled
        take = ref.take
        abort = ref.abort_wait
        call, cast = process.From, process.Cast
        while True:
            if ref.stop_reason is not None:
                return ref.stop_reason
            # Ref.receive without its coroutine frame: one frame less per
            # parked actor.  An idle actor must not keep its last message (and
            # a caller's From) alive, so ``msg`` is NO_MESSAGE while parked.
            msg = take()
            if msg is NO_MESSAGE:
                msg = await wait(abort)
                if msg is NO_MESSAGE:
                    continue  # woken by request_stop
            else:
                await checkpoint()
            kind = type(msg)
            if kind is call:
                result = await self.handle_call(msg.request, msg)
                if result is not NO_REPLY:
                    msg.resolve(outcome.Value(result))
            elif kind is cast:
                await self.handle_cast(msg.request)
            else:
                await self.handle_info(msg)


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
            ref.record_exit(ExitReason.crashed(exc))
            raise
    started = False
    terminated = False
    crash: BaseException | None = None
    final = KILLED
    scope: trio.CancelScope | None = None
    try:
        try:
            async with trio.open_nursery() as nursery:
                # The nursery's own cancel scope is the actor's (``kill`` cancels
                # it): a second scope per actor would cost memory and start time.
                scope = nursery.cancel_scope
                ref.attach(scope)
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
            cancelled, crash = split_cancelled(exc)
            if crash is None:
                raise
            final = ExitReason.crashed(crash)
            # Not an Exception (KeyboardInterrupt, SystemExit, or a group of
            # which one is not: a group of Exceptions *is* an ExceptionGroup).
            if not isinstance(crash, Exception):
                raise
            if cancelled is not None:
                raise cancelled from None
        if ref.kill_reason is not None and (
            crash is not None or (scope is not None and scope.cancelled_caught)
        ):
            # Killed (or killed while crashing): no terminate, as in OTP.
            if crash is None:
                final = ref.kill_reason
        elif started and not terminated:
            # After a crash (or a cancelled nursery): terminate runs outside the
            # nursery, in a scope of its own that a kill still cancels.
            terminated = True
            with trio.CancelScope() as scope:
                ref.attach(scope)
                try:
                    await server.terminate(final)
                except Exception:
                    logger.exception(
                        "%r: terminate raised after a crash",
                        ref,
                        extra={"event": "terminate_failed", "actor": repr(ref)},
                    )
            if scope.cancelled_caught and crash is None:
                final = ref.kill_reason or KILLED
    finally:
        ref.record_exit(final)
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
    return await _start_within(timeout, server, nursery, name, link, None)


async def _start_within(
    timeout: float | None,  # noqa: ASYNC109 - the start timeout, applied to nursery.start
    server: GenServer,
    nursery: trio.Nursery,
    *args: Any,
) -> Ref:
    """``nursery.start(_run, server, *args)``; :class:`StartTimeout` after ``timeout`` s."""
    if timeout is None:
        ref: Ref = await nursery.start(_run, server, *args)
        return ref
    with trio.move_on_after(timeout):
        ref = await nursery.start(_run, server, *args)
        return ref
    raise StartTimeout(server, timeout)


async def start_supervised(
    nursery: trio.Nursery,
    server: GenServer,
    name: Any,
    parent: Ref,
    timeout: float | None = None,  # noqa: ASYNC109 - ChildSpec.start_timeout
    on_started: Callable[[Ref], None] | None = None,
) -> Ref:
    """Start a supervisor's child: crashes are only reported as its exit reason.

    For supervisors (:mod:`otpy.supervisor`), not for application code, which
    uses :func:`start` or a supervisor's ``start_child``.  ``parent`` becomes
    the child's ``parent``; ``on_started`` runs in
    the child's task the moment its ``init`` returned, before anything else
    can run, so the supervisor monitors it without a window in which a crash
    would go unseen.
    """
    return await _start_within(timeout, server, nursery, name, False, parent, on_started)


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


__getattr__ = moved_names(__name__, {name: f"otpy.process:{name}" for name in process.__all__})
