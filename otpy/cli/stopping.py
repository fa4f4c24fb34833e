"""How long-running commands end: their work is done, time is up, or a signal came."""

from __future__ import annotations

import math
import signal
from collections.abc import Awaitable, Callable

import trio

__all__ = ["until_stopped"]


async def until_stopped(
    body: Callable[[], Awaitable[object]],
    *,
    seconds: float | None,
    on_signal: Callable[[int], None] | None = None,
) -> None:
    """Run ``body`` until it returns, ``seconds`` pass, or SIGINT/SIGTERM arrives.

    A command's clean-up (unsubscribe, final report) then runs normally
    instead of being cut short by ``KeyboardInterrupt``; ``on_signal`` is told
    which signal stopped it.
    """
    with (
        trio.move_on_after(math.inf if seconds is None else seconds),
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
    ):
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    if on_signal is not None:
                        on_signal(signum)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            await body()
            nursery.cancel_scope.cancel()
