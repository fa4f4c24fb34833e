"""How long-running commands end: their work is done, time is up, a signal came, or
nobody reads their output any more.

``otpy tail ... | head -1`` must end as soon as ``head`` has its line, even if
no further change ever comes: :class:`LineOutput` notices the reader going
away (a write fails with ``EPIPE``, or, on Linux, the pipe reports it at once)
and the command stops like after Ctrl-C, releasing its slot.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import stat
from collections.abc import Awaitable, Callable
from typing import TextIO

import trio

__all__ = ["LineOutput", "until_stopped"]


class LineOutput:
    """Lines for a stream (stdout) that may be a pipe whose reader goes away.

    :meth:`print` never raises ``BrokenPipeError``: it sets :attr:`closed` and
    returns False, so a replication handler can stop instead of crashing (a
    crashing handler would be restarted and fail again, forever).
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.closed = trio.Event()
        """Set once the reader of :attr:`stream` is gone."""

    def print(self, *lines: str) -> bool:
        """Write ``lines`` and flush; False (and :attr:`closed` set) if nobody reads any more."""
        if self.closed.is_set():
            return False
        try:
            for line in lines:
                print(line, file=self.stream)
            self.stream.flush()
        except BrokenPipeError:
            self.closed.set()
            return False
        return True

    async def watch(self) -> None:
        """Return (setting :attr:`closed`) when the stream's reader goes away.

        Where this cannot be seen without writing (not Linux, not a pipe or a
        socket), it waits for :meth:`print` to find out.
        """
        with contextlib.suppress(OSError, ValueError, AttributeError):
            fd = self.stream.fileno()
            mode = os.fstat(fd).st_mode
            if hasattr(select, "epoll") and (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
                await _wait_reader_gone(fd)
                self.closed.set()
                return
        await self.closed.wait()


async def _wait_reader_gone(fd: int) -> None:
    """Wait until the other end of pipe ``fd`` is closed (Linux).

    An epoll set watching ``fd`` for *no* event still reports ``EPOLLERR``
    (a pipe with no reader) and ``EPOLLHUP``; the epoll descriptor itself is
    readable when it has something to report, so trio can wait on it like on
    any socket: no thread, no polling.
    """
    epoll = select.epoll()
    try:
        epoll.register(fd, 0)
        while True:
            await trio.lowlevel.wait_readable(epoll.fileno())
            if any(events & (select.EPOLLERR | select.EPOLLHUP) for _, events in epoll.poll(0)):
                return
    finally:
        trio.lowlevel.notify_closing(epoll.fileno())
        epoll.close()


async def until_stopped(
    body: Callable[[], Awaitable[object]],
    *,
    seconds: float | None,
    on_signal: Callable[[int], None] | None = None,
    output: LineOutput | None = None,
) -> int | None:
    """Run ``body`` until it returns, ``seconds`` pass, SIGINT/SIGTERM arrives or
    ``output``'s reader goes away; return the signal that stopped it, if one did.

    A command's clean-up (unsubscribe, final report) then runs normally
    instead of being cut short by ``KeyboardInterrupt``; ``on_signal`` is told
    which signal stopped it, and the caller maps SIGINT to exit code 130.
    """
    received: list[int] = []
    with (
        trio.move_on_after(math.inf if seconds is None else seconds),
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
    ):
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    received.append(signum)
                    if on_signal is not None:
                        on_signal(signum)
                    nursery.cancel_scope.cancel()

            async def stop_when_unread(out: LineOutput) -> None:
                await out.watch()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            if output is not None:
                nursery.start_soon(stop_when_unread, output)
            await body()
            nursery.cancel_scope.cancel()
    return received[0] if received else None
