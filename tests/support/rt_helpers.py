"""Test servers shared by the runtime tests: workers that record what happens to them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

import otpy


class Journal:
    """Ordered record of starts and stops across all workers of a test."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.init_failures: dict[Any, int] = {}  # child id -> how many next inits fail
        self._changed = trio.Event()

    def record(self, kind: str, cid: Any) -> None:
        self.events.append((kind, cid))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait (on events, not sleeps) until ``predicate()`` holds."""
        while not predicate():
            await self._changed.wait()

    def starts(self) -> list[Any]:
        return [cid for kind, cid in self.events if kind == "start"]

    def stops(self) -> list[Any]:
        return [cid for kind, cid in self.events if kind == "stop"]

    def clear(self) -> None:
        self.events.clear()


class Worker(otpy.GenServer):
    """Records init/terminate in a journal; crashes or exits on request."""

    def __init__(self, cid: Any, journal: Journal, terminate_time: float = 0.0) -> None:
        self.cid = cid
        self.journal = journal
        self.terminate_time = terminate_time
        self.terminate_finished = False

    async def init(self) -> None:
        failures = self.journal.init_failures.get(self.cid, 0)
        if failures:
            self.journal.init_failures[self.cid] = failures - 1
            raise RuntimeError(f"{self.cid} refuses to start")
        self.journal.record("start", self.cid)

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        if request == "ping":
            return ("pong", self.cid)
        if request == "exit":
            self.stop(otpy.NORMAL)
            return "ok"
        return await super().handle_call(request, from_)

    async def handle_cast(self, request: Any) -> None:
        if request == "crash":
            raise RuntimeError(f"{self.cid} crashed on request")
        if request == "exit":
            self.stop(otpy.NORMAL)

    async def terminate(self, reason: otpy.ExitReason) -> None:
        self.journal.record("stop", self.cid)
        if self.terminate_time:
            await trio.sleep(self.terminate_time)
        self.terminate_finished = True


class HangOnRestart(Worker):
    """Starts at once the first time; every restart hangs in ``init`` (an unreachable host)."""

    def __init__(self, cid: str, journal: Journal, gate: trio.Event, runs: list[int]) -> None:
        super().__init__(cid, journal)
        self.gate_event = gate
        self.runs = runs

    async def init(self) -> None:
        self.runs.append(1)
        if len(self.runs) > 1:
            await self.gate_event.wait()
        await super().init()


def worker_spec(cid: Any, journal: Journal, **kwargs: Any) -> otpy.ChildSpec:
    terminate_time = kwargs.pop("terminate_time", 0.0)
    start: Callable[[], otpy.GenServer] = lambda: Worker(cid, journal, terminate_time)  # noqa: E731
    return otpy.ChildSpec(id=cid, start=start, **kwargs)


async def child_ref(sup: Any, cid: Any) -> otpy.Ref:
    for info in await otpy.which_children(sup):
        if info.id == cid:
            assert info.ref is not None, f"{cid} is not running"
            return info.ref
    raise AssertionError(f"no child {cid}")


async def crash(sup: Any, cid: Any) -> otpy.Ref:
    """Crash a child and wait until its supervisor has handled the exit."""
    ref = await child_ref(sup, cid)
    otpy.cast(ref, "crash")
    await ref.wait()
    # The Down reached the supervisor before ref.wait() returned, so this call
    # is answered only after the supervisor reacted to it.
    await otpy.count_children(sup)
    return ref


async def running(sup: Any) -> dict[Any, otpy.Ref | None]:
    return {info.id: info.ref for info in await otpy.which_children(sup)}


class Counter(otpy.GenServer):
    def __init__(self, start: int = 0) -> None:
        self.value = start
        self.infos: list[Any] = []
        self.terminated: list[otpy.ExitReason] = []
        self.info_event = trio.Event()

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case "get":
                return self.value
            case ("add", n):
                self.value += n
                return self.value
            case "crash":
                raise ValueError("asked to crash")
            case "stop":
                self.stop()
                return "stopping"
            case ("sleep", seconds):
                await trio.sleep(seconds)
                return "slept"
        return await super().handle_call(request, from_)

    async def handle_cast(self, request: Any) -> None:
        if request == "crash":
            raise ValueError("cast crash")
        self.value += request

    async def handle_info(self, message: Any) -> None:
        self.infos.append(message)
        self.info_event.set()

    async def terminate(self, reason: otpy.ExitReason) -> None:
        self.terminated.append(reason)


class Watcher(otpy.GenServer):
    """Monitors or links on request and records what it receives."""

    trap_exits = False

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.got = trio.Event()

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case ("monitor", target):
                return self.monitor(target)
            case ("demonitor", mon):
                return otpy.demonitor(mon)
            case ("link", target):
                self.link(target)
                return None
            case ("unlink", target):
                otpy.unlink(target)
                return None
        return None

    async def handle_cast(self, request: Any) -> None:
        if request == "crash":
            raise LookupError("watched actor crashed")
        if request == "exit":
            self.stop()

    async def handle_info(self, message: Any) -> None:
        self.received.append(message)
        self.got.set()
