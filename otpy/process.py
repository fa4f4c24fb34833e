"""The process API: talk to actors, watch them, answer their calls.

What OTP spreads over ``gen:call``, ``gen_server:reply``, ``erlang:send``,
``erlang:monitor`` and ``erlang:link`` lives here, apart from any behaviour:
:func:`call`, :func:`cast` and :func:`send` reach an actor from any trio task,
actor or not; :func:`reply` and :func:`reply_error` answer a call later;
:func:`monitor` / :func:`demonitor` and :func:`link` / :func:`unlink` tie
lifetimes together; :func:`stop` ends a server gracefully.
:mod:`otpy.gen_server` builds the GenServer behaviour on these, as
``gen_server.erl`` builds on ``gen.erl``.  The same names are at the top level
(``otpy.call``), which is how applications spell them.

Design, and why:

* A call is a :class:`From` delivered to the server's mailbox; the caller
  parks on ``trio.lowlevel.wait_task_rescheduled`` until the server's runner
  resolves it.  No channel, no event, no cancel scope per call: a round trip
  is two task switches.
* A call's timeout is a deadline in one ``otpy._deadlines.Deadlines``
  queue per trio run, enforced by one system task (``otpy call timeouts``).
  A cancel scope per call (``trio.move_on_after``) would cost about a third of
  a round trip; a deadline costs two dict operations, and a :class:`From`
  keeps its bucket so that the answered call leaves it in O(1).
* A pending call is remembered by its target ref
  (:meth:`~otpy.Ref.deliver_call`), so that the caller fails with
  :class:`~otpy.errors.ActorExited` the moment the server dies, not when its
  timeout runs out.
"""

from __future__ import annotations

import math
from typing import Any, Final

import outcome
import trio

from otpy._deadlines import Bucket, Deadlines
from otpy._util import check_timeout
from otpy.actor import Monitor, Ref, current_actor
from otpy.errors import ActorExited, CallingSelf, CallTimeout, NotAnActor
from otpy.exit_reason import NOPROC, NORMAL, ExitReason
from otpy.registry import resolve, whereis

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "From",
    "Timer",
    "call",
    "cast",
    "demonitor",
    "link",
    "monitor",
    "reply",
    "reply_error",
    "send",
    "stop",
    "unlink",
]

DEFAULT_CALL_TIMEOUT: Final = 5.0
"""Seconds a call waits for its reply by default (Erlang's 5000 ms)."""


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
        self._timers: Bucket[From] | None = None

    def __repr__(self) -> str:
        return f"<From {self._task.name} -> {self._target!r}>"

    @property
    def pending(self) -> bool:
        """True while the caller still waits for a reply."""
        return not self._done

    def resolve(self, result: outcome.Outcome[Any]) -> None:
        """Wake the caller with ``result`` (a value or an error), once.

        For process runners (a GenServer's message loop), not for application
        code, which uses :func:`reply` and :func:`reply_error`.
        """
        if self._done:
            return
        # The same bookkeeping as _abort, inlined: every reply passes here,
        # and a method layer shows in a call round trip.
        self._done = True
        self._target.drop_call(self)
        timers = self._timers
        if timers is not None:
            self._timers = None
            timers.pop(self, None)
        trio.lowlevel.reschedule(self._task, result)

    def fail(self, error: BaseException) -> None:
        """Make the caller raise ``error``, once.

        For process runners (a ref whose actor exited, the call timers), not
        for application code, which uses :func:`reply_error`.
        """
        self.resolve(outcome.Error(error))

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        """The caller was cancelled: forget the call (a late reply is then ignored)."""
        self._done = True
        self._target.drop_call(self)
        timers = self._timers
        if timers is not None:
            self._timers = None
            timers.pop(self, None)
        return trio.lowlevel.Abort.SUCCEEDED


def _expire(from_: From, timeout: float) -> None:
    from_.fail(CallTimeout(from_._target, from_.request, timeout))


_TIMERS: trio.lowlevel.RunVar[Deadlines[From]] = trio.lowlevel.RunVar("otpy_call_timers")


def _start_timers() -> Deadlines[From]:
    """The call deadlines of this trio run, enforced by one system task started here."""
    timers: Deadlines[From] = Deadlines(_expire)
    _TIMERS.set(timers)
    trio.lowlevel.spawn_system_task(timers.run, name="otpy call timeouts")
    return timers


class Timer:
    """Handle of a :meth:`~otpy.GenServer.send_after` timer (Erlang's TRef)."""

    __slots__ = ("_fired", "_scope")

    def __init__(self, scope: trio.CancelScope | None = None) -> None:
        self._scope = trio.CancelScope() if scope is None else scope
        self._fired = False

    def cancel(self) -> bool:
        """Stop the timer; False if the message was already sent."""
        if self._fired or self._scope.cancel_called:
            return False
        self._scope.cancel()
        return True

    async def run(self, delay: float, target: Any, message: Any) -> None:
        """Sleep ``delay`` seconds, then send ``message`` to ``target`` unless cancelled.

        For process runners (the task :meth:`GenServer.send_after
        <otpy.GenServer.send_after>` starts in the server's nursery), not for
        application code.  Like ``erlang:send_after`` with a name, an unknown
        name at firing time drops the message.
        """
        with self._scope:
            await trio.sleep(delay)
            self._fired = True
            ref = target if type(target) is Ref else whereis(target)
            if ref is not None:
                ref.deliver(message)


class Cast:
    """The envelope of a :func:`cast` in a mailbox (OTP's ``{'$gen_cast', Request}``).

    For process runners (a GenServer's message loop tells casts from other
    messages by it), not for application code.
    """

    __slots__ = ("request",)

    def __init__(self, request: Any) -> None:
        self.request = request


def reply(from_: From, value: Any) -> None:
    """Reply to a call deferred with :data:`~otpy.NO_REPLY` (``gen_server:reply``)."""
    from_.resolve(outcome.Value(value))


def reply_error(from_: From, error: BaseException) -> None:
    """Make the caller of a pending call raise ``error``, without crashing the server.

    Use it for errors that belong to the caller (bad request, overload), where
    crashing the server would be wrong.
    """
    from_.resolve(outcome.Error(error))


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
    if ref.task is task:
        raise CallingSelf(f"{ref!r} called itself from its own message loop; this would deadlock")
    from_ = From(request, task, ref)
    if timeout is not None and timeout != math.inf:
        if timeout <= 0:
            await trio.lowlevel.checkpoint()
            raise CallTimeout(ref, request, timeout)
        try:
            timers = _TIMERS.get()
        except LookupError:
            timers = _start_timers()
        from_._timers = timers.add(from_, timeout)
    ref.deliver_call(from_)
    return await trio.lowlevel.wait_task_rescheduled(from_._abort)


def cast(target: Any, request: Any) -> None:
    """Send ``request`` to a server's ``handle_cast`` without waiting (``gen_server:cast``).

    Like Erlang's cast it never fails: a dead server or an unknown name drops
    the request.  Use :func:`call` when you need to know it arrived.
    """
    ref = target if type(target) is Ref else whereis(target)
    if ref is not None:
        ref.deliver(Cast(request))


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
    if ref.task is trio.lowlevel.current_task():
        return reason
    if timeout is None:
        return await ref.wait()
    with trio.move_on_after(timeout):
        return await ref.wait()
    raise CallTimeout(target, "stop", timeout)


def _watcher(watcher: Ref | None) -> Ref:
    watcher = watcher or current_actor()
    if watcher is None:
        raise NotAnActor(
            "monitor/link need an actor on the calling side; call it from a server "
            "(or its background tasks), or wait on ref.wait() from a plain task"
        )
    return watcher


def monitor(target: Any, watcher: Ref | None = None) -> Monitor:
    """Monitor ``target``: the watcher (default: the calling actor) gets a ``Down`` on exit.

    If the target is already dead, the ``Down`` (with its real exit reason)
    arrives at once, so no exit can be missed.  An unknown name produces an
    immediate ``Down`` with reason ``noproc``, as in Erlang.
    """
    me = _watcher(watcher)
    ref = target if type(target) is Ref else whereis(target)
    if ref is None:
        ghost = Ref(f"noproc:{target!r}")
        ghost.record_exit(NOPROC)
        ref = ghost
    return me.watch(ref)


def demonitor(mon: Monitor) -> bool:
    """Cancel a monitor; False if its ``Down`` was already delivered.

    A ``Down`` already delivered stays in the mailbox (Erlang's ``demonitor``
    without ``flush``).
    """
    return mon.cancel()


def link(target: Any, watcher: Ref | None = None) -> None:
    """Link the calling actor (or ``watcher``) with ``target`` both ways.

    An abnormal exit of either kills the other with
    :class:`~otpy.errors.ExitSignal` as reason, unless it sets
    ``trap_exits = True`` and so receives an :class:`~otpy.Exit` message instead.
    Linking to an actor already dead acts at once, as if it had just exited.
    Within trio, prefer structure (a shared nursery, a supervisor) when it fits;
    links are for actors whose lifetimes are tied but who live in different trees.
    """
    _watcher(watcher).link_to(resolve(target))


def unlink(target: Any, watcher: Ref | None = None) -> None:
    """Remove a link created with :func:`link` (no error if there is none)."""
    ref = target if type(target) is Ref else whereis(target)
    if ref is not None:
        _watcher(watcher).unlink_from(ref)
