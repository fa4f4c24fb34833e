"""Every exception the otpy runtime raises, in one place.

Callers catch these by class, so each failure mode has its own class and the
message says what went wrong and what to do about it.  The hierarchy mirrors the
OTP error terms a caller would match on (``noproc``, ``timeout``,
``{already_started, Pid}``, ...), so code ported from Erlang/Elixir can keep its
error handling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from otpy.exit_reason import NOPROC, ExitReason

if TYPE_CHECKING:
    from otpy.actor import Ref


class OtpyError(Exception):
    """Base class of every otpy runtime error, so ``except OtpyError`` catches them all."""


class CallError(OtpyError):
    """A :func:`otpy.call` did not produce a reply (the server is gone or too slow)."""


class ActorExited(CallError):
    """The target actor exited before it replied (or was already dead).

    Raised at once when the server dies, never after waiting for the timeout:
    a caller must not sit on a deadline for a reply that cannot come.  ``reason``
    is the server's exit reason, so the caller can tell a crash (with its
    exception) from an orderly stop.
    """

    def __init__(self, target: object, reason: ExitReason) -> None:
        super().__init__(f"{target!r} exited ({reason}) before replying")
        self.target = target
        self.reason = reason


class NoProcess(ActorExited):
    """No live actor is registered under the name that was called or sent to.

    The Erlang ``noproc``: the name was never registered, or its actor has
    exited and the name was released.  Check the name, or start the actor first.
    """

    def __init__(self, name: object) -> None:
        CallError.__init__(self, f"no actor is registered as {name!r}; is it started?")
        self.target = name
        self.reason = NOPROC


class CallTimeout(CallError, TimeoutError):
    """The server is alive but did not reply within the call's timeout.

    Also a :class:`TimeoutError`.  A late reply is dropped.  Raise the timeout
    if the request is legitimately slow, or look for a server blocked in a handler.
    """

    def __init__(self, target: object, request: Any, timeout: float) -> None:
        super().__init__(f"{target!r} did not reply to {request!r} within {timeout} s")
        self.target = target
        self.request = request
        self.timeout = timeout


class CallingSelf(CallError):
    """An actor called itself from its own message loop, which would deadlock.

    Handle the request directly, or call from a background task of the server.
    """


class InvalidArgument(OtpyError, ValueError):
    """An option given to the runtime has a value it cannot use.

    Raised where the value enters (building a :class:`~otpy.ChildSpec`, a
    supervisor or a :class:`~otpy.Backoff`, calling ``call``/``stop``/``start``
    with a timeout), never later from inside a running actor.  ``option`` names
    the option, ``value`` is what was given; the message says what is accepted.
    Also a :class:`ValueError`, so existing ``except ValueError`` keeps working.
    Fix the value at the place the message names.
    """

    def __init__(self, option: str, value: object, expected: str) -> None:
        super().__init__(f"invalid {option}={value!r}: expected {expected}")
        self.option = option
        self.value = value
        self.expected = expected


class NotAnActor(OtpyError):
    """An operation that needs the calling task to be an actor (e.g. ``monitor``
    without a watcher) was used from a plain trio task."""


class InitError(OtpyError):
    """An actor's ``init`` raised, so it never started.

    The original exception is ``__cause__`` (and ``reason.error``).  Raised to
    whoever started the actor (``otpy.start``, a supervisor, ``start_child``), as
    ``{error, Reason}`` is returned by OTP's ``start_link``.
    """

    def __init__(self, server: object, reason: ExitReason) -> None:
        super().__init__(f"{server!r} failed to start: {reason}")
        self.server = server
        self.reason = reason


class StartTimeout(InitError, TimeoutError):
    """A child's ``init`` did not finish within its start timeout, so it was cancelled.

    Raised to whoever started it (``otpy.start(..., timeout=...)``,
    ``start_child``), or, for a restart, handled by the supervisor like any
    failed restart.  Also an :class:`InitError` and a :class:`TimeoutError`.
    Raise ``ChildSpec.start_timeout`` if the start is legitimately slow, or
    look for an ``init`` waiting on something unreachable.
    """

    def __init__(self, server: object, timeout: float) -> None:
        self.timeout = timeout
        reason = ExitReason("killed", detail=f"init did not finish within {timeout} s")
        InitError.__init__(self, server, reason)


class NameTaken(OtpyError):
    """A name is already registered to a live actor (OTP's ``{already_started, Pid}``).

    ``ref`` is the actor that holds the name, so a caller can use it instead.
    """

    def __init__(self, name: object, ref: Ref) -> None:
        super().__init__(f"the name {name!r} is already registered to {ref!r}")
        self.name = name
        self.ref = ref


class UnexpectedMessage(OtpyError):
    """A server received a call or cast its behaviour does not handle.

    Raised inside the server (crashing it), like an unmatched clause in Erlang.
    Override ``handle_call``/``handle_cast`` to accept the request.
    """


class ExitSignal(OtpyError):
    """An actor was killed because an actor linked to it exited abnormally.

    ``source`` is the linked actor and ``reason`` its exit reason.  Set
    ``trap_exits = True`` on a server to receive :class:`otpy.Exit` messages instead.
    """

    def __init__(self, source: Ref, reason: ExitReason) -> None:
        super().__init__(f"linked actor {source!r} exited: {reason}")
        self.source = source
        self.reason = reason


class SupervisorError(OtpyError):
    """Base class of supervisor management errors (unknown child, bad spec, ...)."""


class ChildNotFound(SupervisorError):
    """No child with this id (or ref) exists under the supervisor."""


class ChildRunning(SupervisorError):
    """``restart_child``/``delete_child`` on a child that is still running; terminate it first."""


class DuplicateChild(SupervisorError):
    """A child spec with this id already exists under the supervisor; ids must be unique."""


class MaxChildren(SupervisorError):
    """A DynamicSupervisor already runs ``max_children`` children."""


class GaveUp(OtpyError):
    """A supervisor exceeded its restart intensity and shut itself down.

    This is the exit reason a supervisor crashes with, so its own supervisor
    restarts it (escalation), as OTP's ``shutdown`` after ``reached_max_restart_intensity``.
    Raise the intensity, or fix the child that keeps crashing.
    """

    def __init__(self, supervisor: str, child_id: object, restarts: int, period: float) -> None:
        # ``supervisor`` is the supervisor's label, already quoted ('name' or <Ref ...>).
        super().__init__(
            f"supervisor {supervisor} gave up: more than {restarts} restarts in {period} s "
            f"(last crash: child {child_id!r})"
        )
        self.supervisor = supervisor
        self.child_id = child_id
        self.restarts = restarts
        self.period = period


class ApplicationError(OtpyError):
    """Base class of application errors."""


class DependencyCycle(ApplicationError):
    """Applications depend on each other in a cycle, so no start order exists."""


class ApplicationStartError(ApplicationError):
    """An application's root supervisor failed to start; the others were stopped again."""

    def __init__(self, app: str, error: BaseException) -> None:
        super().__init__(f"application {app!r} failed to start: {error}")
        self.app = app
        self.error = error


class ApplicationFailed(ApplicationError):
    """An application's root supervisor exited abnormally while running (it gave up).

    Every application was stopped in reverse start order before this was raised.
    """

    def __init__(self, app: str, reason: ExitReason) -> None:
        super().__init__(f"application {app!r} failed: {reason}")
        self.app = app
        self.reason = reason
