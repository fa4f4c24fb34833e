"""Applications: named units with config and dependencies, started from a root spec.

An :class:`Application` is OTP's ``application`` as a value: a name, a default
environment, the applications it depends on, and a ``start`` function that
turns the (merged) environment into the root supervisor's spec.  Running them:

* ``async with otpy.start_application(app) as system:`` inside an existing trio
  run (tests, embedding): dependencies start first, in dependency order, and
  everything stops in reverse order when the block exits;
* ``await otpy.serve(app)`` runs until :meth:`System.stop` is called;
* ``otpy.run(app)`` is the program entry point: its own trio run, SIGINT and
  SIGTERM turn into an orderly stop, and the return value is an exit code that
  says how it ended (:class:`ExitCode`).

If a root supervisor exits abnormally (it gave up), every application is
stopped in reverse order and :class:`~otpy.errors.ApplicationFailed` is raised,
as a permanent OTP application takes its node down.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs
import trio

from otpy._util import check_bool, raise_unwrapped
from otpy.actor import Ref
from otpy.child_spec import ChildSpec
from otpy.errors import (
    ApplicationFailed,
    ApplicationStartError,
    DependencyCycle,
    InitError,
    OtpyError,
)
from otpy.exit_reason import SHUTDOWN
from otpy.gen_server import GenServer, start
from otpy.registry import Registry, current_registry, use_registry

__all__ = [
    "Application",
    "ExitCode",
    "System",
    "current_system",
    "get_env",
    "run",
    "serve",
    "start_application",
    "start_order",
]

logger = logging.getLogger("otpy.application")


def _frozen_env(env: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(env or {}))


def _dependencies(deps: Iterable[Application]) -> tuple[Application, ...]:
    return tuple(deps)


@attrs.frozen(eq=False)
class Application:
    """One application: ``start(env)`` returns the root supervisor's spec (or server).

    ``env`` holds defaults that callers of :func:`start_application`/:func:`run`
    can override per application name; ``dependencies`` are other
    :class:`Application` values, started before this one and stopped after it.
    """

    name: str
    start: Callable[[Mapping[str, Any]], ChildSpec | GenServer]
    env: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_env)
    dependencies: tuple[Application, ...] = attrs.field(default=(), converter=_dependencies)
    description: str = ""


class ExitCode(enum.IntEnum):
    """How :func:`run` ended, as a process exit code.

    The values do not collide with the ``otpy`` command line's own codes
    (2 = bad command line, 66/69/78 from ``sysexits.h``), so a script running
    ``otpy run`` can tell them apart.
    """

    STOPPED = 0
    """Stopped on request (SIGTERM or :meth:`System.stop`): an orderly end."""
    FAILED = 1
    """A root supervisor gave up while running."""
    START_FAILED = 70
    """An application failed to start (``EX_SOFTWARE``: its ``init`` refused to run)."""
    FORCED = 3
    """A second SIGINT/SIGTERM cut the orderly stop short: everything was cancelled."""
    INTERRUPTED = 130
    """Stopped by SIGINT (Ctrl-C), the shell convention 128 + 2."""


def start_order(app: Application) -> list[Application]:
    """``app`` and its dependencies, each after everything it depends on.

    Raises :class:`~otpy.errors.DependencyCycle` for a cycle, and
    :class:`~otpy.errors.OtpyError` if two different applications share a name.
    """
    order: list[Application] = []
    done: dict[str, Application] = {}
    visiting: list[str] = []

    def visit(a: Application) -> None:
        seen = done.get(a.name)
        if seen is not None:
            if seen is not a:
                raise OtpyError(f"two different applications are named {a.name!r}")
            return
        if a.name in visiting:
            cycle = [*visiting[visiting.index(a.name) :], a.name]
            raise DependencyCycle(f"applications depend on each other: {' -> '.join(cycle)}")
        visiting.append(a.name)
        for dep in a.dependencies:
            visit(dep)
        visiting.pop()
        done[a.name] = a
        order.append(a)

    visit(app)
    return order


_SYSTEM: contextvars.ContextVar[System | None] = contextvars.ContextVar("otpy_system", default=None)


class System:
    """The running applications started by one :func:`start_application`.

    Gives access to each application's root supervisor and environment, and
    lets any task ask for an orderly stop (what SIGTERM does under :func:`run`).

    Attributes: ``registry`` (where plain names resolve), ``running`` (the
    started applications and their root refs, in start order), ``envs`` (merged
    environment per application name), ``stop_requested`` (set by :meth:`stop`),
    ``stop_reason`` (the first reason given to :meth:`stop`) and ``failure``
    (the :class:`~otpy.errors.ApplicationFailed` of a root that failed, if any).
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.running: list[tuple[Application, Ref]] = []
        self.envs: dict[str, Mapping[str, Any]] = {}
        self.stop_requested = trio.Event()
        self.stop_reason: str | None = None
        self.failure: ApplicationFailed | None = None
        self._stopping = False
        self._body_scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<System {[a.name for a, _ in self.running]}>"

    def root(self, name: str) -> Ref:
        """The root supervisor of the running application ``name``."""
        for app, ref in self.running:
            if app.name == name:
                return ref
        raise KeyError(f"application {name!r} is not running")

    def env(self, name: str) -> Mapping[str, Any]:
        """The merged environment application ``name`` was started with."""
        return self.envs[name]

    def stop(self, reason: str = "requested") -> None:
        """Ask :func:`serve`/:func:`run` to stop all applications in reverse order."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop_requested.set()

    async def _watch(self, app: Application, ref: Ref) -> None:
        reason = await ref.wait()
        if self._stopping:
            return
        if reason.normal:
            # A root that stops by itself ends the system, as a permanent OTP
            # application stopping takes its node down (but as an orderly stop).
            logger.info(
                "application %s exited (%s); stopping the system",
                app.name,
                reason,
                extra={"event": "application_exited", "application": app.name},
            )
            self.stop(f"application {app.name} exited")
            return
        logger.error(
            "application %s failed: %s",
            app.name,
            reason,
            extra={"event": "application_failed", "application": app.name, "reason": str(reason)},
        )
        if self.failure is None:
            self.failure = ApplicationFailed(app.name, reason)
        self.stop("failed")
        if self._body_scope is not None:
            self._body_scope.cancel()

    async def _stop_all(self) -> None:
        self._stopping = True
        for app, ref in reversed(self.running):
            ref.request_stop(SHUTDOWN)
            reason = await ref.wait()
            logger.info(
                "application %s stopped (%s)",
                app.name,
                reason,
                extra={
                    "event": "application_stopped",
                    "application": app.name,
                    "reason": str(reason),
                },
            )


def current_system() -> System | None:
    """The :class:`System` the calling task runs in (inherited by its actors), or None."""
    return _SYSTEM.get()


def get_env(app: str, key: str, default: Any = None) -> Any:
    """Read ``key`` from application ``app``'s environment (``application:get_env``)."""
    system = _SYSTEM.get()
    if system is None or app not in system.envs:
        return default
    return system.envs[app].get(key, default)


@contextlib.asynccontextmanager
async def start_application(
    app: Application,
    *,
    env: Mapping[str, Mapping[str, Any]] | None = None,
    registry: Registry | None = None,
) -> AsyncIterator[System]:
    """Start ``app`` and its dependencies in the current trio run; stop them on exit.

    ``env`` maps application names to overrides of their default environment.
    With ``registry``, plain names inside the block (and in every actor of the
    applications) resolve in that registry, so several systems can share a
    process without their names colliding; by default the run's registry is used.

    Raises :class:`~otpy.errors.ApplicationStartError` if an application fails
    to start (those already started are stopped first), and
    :class:`~otpy.errors.ApplicationFailed` (after stopping everything) if a
    root supervisor gives up while the block runs; the block is cancelled then.
    """
    order = start_order(app)
    overrides = env or {}
    with contextlib.ExitStack() as stack:
        if registry is not None:
            stack.enter_context(use_registry(registry))
        system = System(current_registry())
        token = _SYSTEM.set(system)
        try:
            async with trio.open_nursery() as nursery:
                try:
                    for a in order:
                        await _start_one(system, nursery, a, overrides.get(a.name, {}))
                    with trio.CancelScope() as body_scope:
                        system._body_scope = body_scope
                        if system.failure is not None:  # a root failed while others started
                            body_scope.cancel()
                        yield system
                finally:
                    system._body_scope = None
                    await system._stop_all()
        except BaseExceptionGroup as group:
            # Only the block (or a start) can raise here: hand its exception back
            # as it was raised, not wrapped by the nursery that spans the block.
            raise_unwrapped(group)
        finally:
            _SYSTEM.reset(token)
    if system.failure is not None:
        raise system.failure


async def _start_one(
    system: System, nursery: trio.Nursery, app: Application, override: Mapping[str, Any]
) -> None:
    merged = _frozen_env({**app.env, **override})
    system.envs[app.name] = merged
    try:
        root = app.start(merged)
        if isinstance(root, ChildSpec):
            ref = await start(nursery, root.start(), name=root.name, link=False)
        else:
            ref = await start(nursery, root, link=False)
    except Exception as exc:
        # Raised to the caller, who reports it (run() logs one clear line):
        # logging a traceback here as well would show the same failure twice.
        logger.info(
            "application %s failed to start: %s",
            app.name,
            exc,
            extra={"event": "application_start_failed", "application": app.name},
        )
        raise ApplicationStartError(app.name, exc) from exc
    system.running.append((app, ref))
    logger.info(
        "application %s started",
        app.name,
        extra={"event": "application_started", "application": app.name, "ref": repr(ref)},
    )
    nursery.start_soon(system._watch, app, ref)


async def serve(
    app: Application,
    *,
    env: Mapping[str, Mapping[str, Any]] | None = None,
    registry: Registry | None = None,
    task_status: trio.TaskStatus[System] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``app`` until :meth:`System.stop` is called, then stop it in order.

    Use with ``nursery.start(serve, app)`` to get the :class:`System` once
    every application has started.
    """
    async with start_application(app, env=env, registry=registry) as system:
        task_status.started(system)
        await system.stop_requested.wait()


def _start_failure_line(exc: ApplicationStartError) -> str:
    """One line saying which application failed to start, where, and the root cause.

    The chain of :class:`~otpy.errors.InitError` (root supervisor -> its
    child -> ...) is followed down to the exception an ``init`` raised.
    """
    error = exc.error
    where: object = None
    while isinstance(error, InitError):
        where = error.server
        if error.reason.error is None:
            break
        error = error.reason.error
    if isinstance(where, GenServer):
        place = f"{type(where).__name__}.init raised "
    elif where is not None and error is not exc.error:
        place = f"child {where!r}: "
    else:
        place = ""
    return f"application {exc.app!r} failed to start: {place}{type(error).__name__}: {error}"


async def _main(
    app: Application, env: Mapping[str, Mapping[str, Any]] | None, handle_signals: bool
) -> ExitCode:
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    received: list[int] = []
    systems: list[System] = []
    code = ExitCode.STOPPED
    with trio.open_signal_receiver(*signals) if signals else contextlib.nullcontext() as sigs:
        async with trio.open_nursery() as outer:

            async def on_signals(sigs: Any) -> None:
                async for signum in sigs:
                    received.append(signum)
                    name = signal.Signals(signum).name
                    if len(received) == 1:
                        logger.info(
                            "received %s, stopping in order (send it again to force)",
                            name,
                            extra={"event": "signal", "signal": name},
                        )
                        if systems:
                            systems[0].stop(name)
                    else:
                        logger.warning(
                            "received %s again, cancelling everything",
                            name,
                            extra={"event": "forced_stop", "signal": name},
                        )
                        outer.cancel_scope.cancel()
                        return

            if sigs is not None:
                outer.start_soon(on_signals, sigs)
            try:
                async with start_application(app, env=env) as system:
                    systems.append(system)
                    if received:  # a signal arrived while starting
                        system.stop(signal.Signals(received[0]).name)
                    await system.stop_requested.wait()
            except ApplicationStartError as exc:
                # One clear line; the traceback only for whoever asked for DEBUG.
                logger.error(
                    "%s",
                    _start_failure_line(exc),
                    exc_info=exc if logger.isEnabledFor(logging.DEBUG) else None,
                    # ``error``: the exception itself, for a caller that reports it
                    # in its own words (the ``otpy`` command line does).
                    extra={
                        "event": "application_start_failed",
                        "application": exc.app,
                        "error": exc,
                    },
                )
                code = ExitCode.START_FAILED
            except ApplicationFailed:
                code = ExitCode.FAILED
            else:
                if received and received[0] == signal.SIGINT:
                    code = ExitCode.INTERRUPTED
            outer.cancel_scope.cancel()
    if len(received) > 1:
        return ExitCode.FORCED
    return code


def run(
    app: Application,
    *,
    env: Mapping[str, Mapping[str, Any]] | None = None,
    handle_signals: bool = True,
    clock: trio.abc.Clock | None = None,
    exit_on_failure: bool | None = None,
) -> ExitCode:
    """Run ``app`` (and its dependencies) in a new trio run until it is stopped.

    SIGINT and SIGTERM stop every application in reverse start order; a second
    one cancels whatever is still stopping (for a ``terminate`` that hangs).
    Returns an :class:`ExitCode` (an int) for ``sys.exit``: 0 after SIGTERM or
    :meth:`System.stop`, 130 after SIGINT (as the ``otpy`` command line),
    3 if a second signal forced the stop.

    A *failure* (70 = an application failed to start, 1 = a root supervisor
    gave up) ends the process with that code (``SystemExit``) when
    ``exit_on_failure`` is true, so the README's bare ``otpy.run(app)`` at
    module level cannot exit 0 after a failure; with it false the code is
    returned like the others.  It defaults to ``handle_signals``: a run that
    owns the process's signals is its entry point.  A start failure is logged
    as one ERROR line (the traceback too when the logger is at DEBUG).
    """
    check_bool("handle_signals", handle_signals)
    exit_on_failure = handle_signals if exit_on_failure is None else exit_on_failure
    check_bool("exit_on_failure", exit_on_failure)
    try:
        result: ExitCode = trio.run(_main, app, env, handle_signals, clock=clock)
    except BaseExceptionGroup as group:
        # An error that is not a start failure (a dependency cycle, a bad
        # option): the caller's own exception, not the run's nursery group.
        raise_unwrapped(group)
    if exit_on_failure and result in (ExitCode.START_FAILED, ExitCode.FAILED):
        raise SystemExit(int(result))
    return result
