"""Waiting for psycopg's protocol generators with trio (internal to otpy).

psycopg 3 implements the PostgreSQL protocol as generators that never block:
they yield "wait until the socket is readable/writable" states
(``psycopg.waiting.Wait``) and are resumed with the readiness found
(``Ready``).  psycopg's own waiters consume them with asyncio or with blocking
``select``; the functions here consume the very same generators with
:func:`trio.lowlevel.wait_readable` / :func:`trio.lowlevel.wait_writable`, so
that :class:`~otpy.pg.connection.TrioConnection` (whose ``wait`` is
:func:`wait_gen`) and the COPY_BOTH helpers of :mod:`otpy.pg.copy_both` run on
trio without a thread.

Design and why:

* **Poll before sleeping.**  A socket we write to is nearly always writable,
  and on a local server a reply often arrives within one scheduler pass: a
  zero-timeout poll (``psycopg.waiting._ready`` when present) is far
  cheaper than registering the fd with trio and going to sleep.  This is the
  measured hot path of every query (``benchmarks/pool.py``).
* **Yield now and then.**  A generator that never blocks (results already
  buffered) would never let other tasks run: after ``_MAX_BUSY_TIME`` without
  a scheduler pass, one is taken (psycopg's asyncio waiter does the same).
* **Read-or-write as two tasks.**  trio has no single call waiting for both:
  :func:`wait_either` runs two waiters, only when the poll says neither is
  ready right now (a full send buffer while the server sends results).
* **A closed socket is an error of the connection**, not of trio:
  ``ClosedResourceError`` (:func:`trio.lowlevel.notify_closing` woke us) and
  ``OSError`` become :class:`~otpy.pg.errors.ConnectionClosedError`.

These functions are public within otpy (:mod:`otpy.pg.connection`,
:mod:`otpy.pg.copy_both`) but not part of otpy's API: callers outside the
package use :class:`~otpy.pg.connection.TrioConnection`.
"""

from __future__ import annotations

import math
import select
import time
from collections.abc import Callable
from typing import Any, cast

import trio
from psycopg import errors as e

# Imported first: importing it checks the psycopg internals used below.
import otpy.pg.compat  # noqa: F401

# isort: split
from psycopg import waiting

from otpy._util import first_leaf
from otpy.pg.errors import ConnectionClosedError

__all__ = [
    "READY_R",
    "READY_W",
    "WAIT_R",
    "WAIT_RW",
    "WAIT_W",
    "busy_checkpoint",
    "drive",
    "wait_conn_gen",
    "wait_either",
    "wait_gen",
]

#: psycopg's ``Wait.R`` / ``Wait.W`` / ``Wait.RW``: what a generator yields, as plain ints.
WAIT_R = int(waiting.Wait.R)
WAIT_W = int(waiting.Wait.W)
WAIT_RW = int(waiting.Wait.RW)
#: psycopg's ``Ready.R`` / ``Ready.W``: what a generator is resumed with, as plain ints.
READY_R = int(waiting.Ready.R)
READY_W = int(waiting.Ready.W)

#: How long a generator that never blocks may keep running before we let other
#: tasks run (same rationale and value as psycopg's asyncio waiter).
_MAX_BUSY_TIME = 0.005
_last_yield = 0.0


def _make_ready_function() -> Callable[[int, int], int]:
    """Return a function telling, without blocking, which of ``wait`` is ready on ``fd``."""
    fast = getattr(waiting, "_ready", None)
    if callable(fast):
        return cast(Callable[[int, int], int], fast)

    def ready_poll(fileno: int, wait: int) -> int:  # pragma: no cover - psycopg < 3.3
        poller = select.poll()
        poller.register(
            fileno,
            (select.POLLIN if wait & WAIT_R else 0) | (select.POLLOUT if wait & WAIT_W else 0),
        )
        ready = 0
        for _, events in poller.poll(0):
            if events & select.POLLIN:
                ready |= READY_R
            if events & select.POLLOUT:
                ready |= READY_W
        return ready

    return ready_poll


_ready_now = _make_ready_function()


async def wait_either(fileno: int) -> int:
    """Wait until ``fileno`` is readable or writable; return the Ready flags.

    trio has no single call waiting for both, so two tasks wait and the first
    to wake cancels the other.  Only used when a generator asks for RW and the
    socket is neither writable nor readable right now (a full send buffer),
    which is rare: waiting for writing alone could deadlock when the server is
    itself blocked writing results we do not read.
    """
    ready = 0

    async def waiter(fn: Callable[[int], Any], flag: int, scope: trio.CancelScope) -> None:
        nonlocal ready
        await fn(fileno)
        ready |= flag
        scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, trio.lowlevel.wait_readable, READY_R, nursery.cancel_scope)
            nursery.start_soon(waiter, trio.lowlevel.wait_writable, READY_W, nursery.cancel_scope)
    except BaseExceptionGroup as group:
        # Re-raise a single exception, so that callers can catch trio.Cancelled
        # or a closed socket exactly as for a plain wait.  A socket closed
        # under both waiters fails both: the first failure stands for the two.
        raise first_leaf(group) from None
    return ready


async def drive(gen: Any, state: int, fileno: int) -> Any:
    """Resume ``gen`` (which just yielded ``state``) until it returns; wait with trio.

    For a caller that has already taken the generator's first state (to
    decide what to do with it); others call :func:`wait_gen`.
    """
    global _last_yield
    try:
        while True:
            if state & WAIT_W:
                # A socket we write to is nearly always writable: a zero-timeout
                # poll is far cheaper than a round trip through the scheduler.
                if time.monotonic() - _last_yield >= _MAX_BUSY_TIME:
                    await trio.lowlevel.checkpoint()
                    _last_yield = time.monotonic()
                ready = _ready_now(fileno, state)
                if not ready:
                    if state & WAIT_R:
                        ready = await wait_either(fileno)
                    else:
                        await trio.lowlevel.wait_writable(fileno)
                        ready = READY_W
                    _last_yield = time.monotonic()
            elif state & WAIT_R:
                # One scheduler pass before sleeping in epoll: other tasks run,
                # and a reply that arrived meanwhile (common on a local server)
                # is taken without registering the fd and going to sleep.  This
                # measurably cuts round-trip latency (asyncio psycopg's loop
                # also polls twice per round trip).
                await trio.lowlevel.checkpoint()
                if not _ready_now(fileno, WAIT_R):
                    await trio.lowlevel.wait_readable(fileno)
                _last_yield = time.monotonic()
                ready = READY_R
            else:
                raise e.InternalError(f"bad poll status: {state}")
            state = gen.send(ready)
    except StopIteration as ex:
        return ex.value
    except trio.ClosedResourceError as ex:
        raise ConnectionClosedError(
            "the connection was closed (by another task) while this task was waiting on it"
        ) from ex
    except trio.BusyResourceError as ex:
        raise e.InterfaceError(
            "another task is already waiting on this connection's socket: use the "
            "connection's lock (psycopg methods do) or one connection per task"
        ) from ex
    except OSError as ex:
        raise ConnectionClosedError(f"connection socket closed: {ex}") from ex


async def wait_gen(gen: Any, fileno: int, timeout: float | None = None) -> Any:  # noqa: ASYNC109
    """Consume a psycopg ``PQGen`` (yielding wait states) with trio; return its value.

    Raises psycopg's ``_WaitTimeout`` when ``timeout`` expires (the contract of
    ``AsyncConnection.wait``, relied upon by ``notifies(timeout=...)``).
    """
    global _last_yield
    try:
        state = next(gen)
    except StopIteration as ex:
        # Completed without blocking: let other tasks run now and then.
        if time.monotonic() - _last_yield >= _MAX_BUSY_TIME:
            await trio.lowlevel.checkpoint()
            _last_yield = time.monotonic()
        return ex.value
    if timeout is None:
        return await drive(gen, state, fileno)
    with trio.move_on_after(max(timeout, 0.0)):
        # Data already waiting is processed even with a zero timeout.
        if state & WAIT_R and (ready := _ready_now(fileno, state)):
            try:
                state = gen.send(ready)
            except StopIteration as ex:
                return ex.value
        return await drive(gen, state, fileno)
    raise e._WaitTimeout("wait timeout expired")


async def wait_conn_gen(gen: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109
    """Consume a psycopg ``PQGenConn`` (yielding ``(fd, wait)``, the fd may change)."""
    deadline = math.inf if timeout is None else trio.current_time() + timeout
    try:
        fileno, state = next(gen)
        with trio.move_on_at(deadline):
            while True:
                if state & WAIT_W and not state & WAIT_R:
                    await trio.lowlevel.wait_writable(fileno)
                    ready = READY_W
                elif state & WAIT_R and not state & WAIT_W:
                    await trio.lowlevel.wait_readable(fileno)
                    ready = READY_R
                else:
                    ready = _ready_now(fileno, state) or await wait_either(fileno)
                fileno, state = gen.send(ready)
        raise e._WaitTimeout("wait timeout expired")
    except StopIteration as ex:
        return ex.value
    except (OSError, trio.ClosedResourceError) as ex:
        raise e.OperationalError(f"connection socket closed: {ex}") from ex


async def busy_checkpoint() -> None:
    """A cancellation point that also lets other tasks run if we have not for a while.

    A stream whose frames are always already buffered would otherwise never
    yield to the scheduler and starve every other task.  Shares the "last
    yield" clock of the waits above, so a reader that alternates between
    waiting and taking buffered data yields as often as a query loop does.
    """
    global _last_yield
    if time.monotonic() - _last_yield >= _MAX_BUSY_TIME:
        await trio.lowlevel.checkpoint()
        _last_yield = time.monotonic()
    else:
        await trio.lowlevel.checkpoint_if_cancelled()
