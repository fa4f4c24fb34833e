"""Stateful property test: random crashes under random strategies, checked against a model.

The supervisor runs in a trio run on a helper thread (with a MockClock that
only moves when a rule jumps it); every hypothesis rule drives it through
``trio.from_thread`` and waits until the supervisor has reacted.  A small pure
model predicts, for every step, which children stop and start (in which
order), which specs remain, and when the supervisor gives up.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from rt_helpers import Journal, worker_spec

import otpy
from otpy.errors import ActorExited, GaveUp


@attrs.define
class ModelChild:
    id: str
    restart: otpy.Restart
    running: bool = True


@attrs.define
class Model:
    """What OTP says should happen; events are ("start"|"stop", child id)."""

    strategy: otpy.Strategy
    intensity: int
    period: float
    children: list[ModelChild]
    now: float = 0.0
    restarts: deque[float] = attrs.field(factory=deque)
    dead: bool = False

    def exit(self, cid: str, abnormal: bool) -> list[tuple[str, str]]:
        child = next(c for c in self.children if c.id == cid)
        events = [("stop", cid)]  # terminate runs after a crash and after a normal stop
        child.running = False
        restart = child.restart is otpy.PERMANENT or (child.restart is otpy.TRANSIENT and abnormal)
        if not restart:
            if child.restart is otpy.TEMPORARY:
                self.children.remove(child)
            return events
        self.restarts.append(self.now)
        while self.restarts and self.restarts[0] <= self.now - self.period:
            self.restarts.popleft()
        if len(self.restarts) > self.intensity:
            self.dead = True
            for other in reversed(self.children):
                if other.running:
                    events.append(("stop", other.id))
                    other.running = False
            return events
        index = self.children.index(child)
        if self.strategy is otpy.ONE_FOR_ONE:
            group = [child]
        elif self.strategy is otpy.ONE_FOR_ALL:
            group = list(self.children)
        else:
            group = self.children[index:]
        for other in reversed(group):
            if other.running:
                events.append(("stop", other.id))
                other.running = False
                if other.restart is otpy.TEMPORARY:
                    self.children.remove(other)
        for other in group:
            if other in self.children:
                events.append(("start", other.id))
                other.running = True
        return events

    def terminate(self, cid: str) -> list[tuple[str, str]]:
        child = next(c for c in self.children if c.id == cid)
        child.running = False
        if child.restart is otpy.TEMPORARY:
            self.children.remove(child)
        return [("stop", cid)]

    def restart(self, cid: str) -> list[tuple[str, str]]:
        child = next(c for c in self.children if c.id == cid)
        child.running = True
        return [("start", cid)]


class TrioThread:
    """A trio run on a helper thread, driven synchronously from hypothesis rules."""

    def __init__(self) -> None:
        self.clock = trio.testing.MockClock(rate=0)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _main(self) -> None:
        async def main() -> None:
            self.token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self._ready.set()
                await trio.sleep_forever()

        trio.run(main, clock=self.clock)

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def close(self) -> None:
        trio.from_thread.run_sync(self.nursery.cancel_scope.cancel, trio_token=self.token)
        self._thread.join(10)


restarts = st.sampled_from(list(otpy.Restart))


class SupervisorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.trio = TrioThread()
        self.journal = Journal()
        self.sup: otpy.Ref | None = None
        self.model: Model | None = None
        logging.getLogger("otpy").setLevel(logging.CRITICAL)

    @initialize(
        strategy=st.sampled_from(list(otpy.Strategy)),
        kinds=st.lists(restarts, min_size=1, max_size=5),
        intensity=st.integers(0, 4),
        period=st.sampled_from([1.0, 5.0]),
    )
    def start(
        self, strategy: otpy.Strategy, kinds: list[otpy.Restart], intensity: int, period: float
    ) -> None:
        ids = [f"c{i}" for i in range(len(kinds))]
        pairs = list(zip(ids, kinds, strict=True))
        specs = [worker_spec(cid, self.journal, restart=k) for cid, k in pairs]
        self.model = Model(strategy, intensity, period, [ModelChild(i, k) for i, k in pairs])
        sup = otpy.Supervisor(specs, strategy=strategy, intensity=intensity, period=period)

        async def go() -> otpy.Ref:
            return await otpy.start(self.trio.nursery, sup, link=False)

        self.sup = self.trio.run(go)
        assert self.journal.events == [("start", cid) for cid in ids]
        self.journal.clear()

    def running_children(self) -> list[str]:
        assert self.model is not None
        return [c.id for c in self.model.children if c.running]

    def alive(self) -> bool:
        return self.model is not None and not self.model.dead

    async def _exit_child(self, cid: str, how: str) -> None:
        assert self.sup is not None
        ref = next(i.ref for i in await otpy.which_children(self.sup) if i.id == cid)
        assert ref is not None
        otpy.cast(ref, how)
        await ref.wait()
        with contextlib.suppress(ActorExited):  # the supervisor may have given up
            await otpy.count_children(self.sup)  # answered after the Down was handled

    def _step(self, cid: str, abnormal: bool) -> None:
        assert self.model is not None
        expected = self.model.exit(cid, abnormal)
        self.journal.clear()
        self.trio.run(self._exit_child, cid, "crash" if abnormal else "exit")
        assert self.journal.events == expected

    @precondition(lambda self: self.alive() and self.running_children())
    @rule(data=st.data())
    def crash_child(self, data: st.DataObject) -> None:
        self._step(data.draw(st.sampled_from(self.running_children())), abnormal=True)

    @precondition(lambda self: self.alive() and self.running_children())
    @rule(data=st.data())
    def child_exits_normally(self, data: st.DataObject) -> None:
        self._step(data.draw(st.sampled_from(self.running_children())), abnormal=False)

    @precondition(lambda self: self.alive() and self.running_children())
    @rule(data=st.data())
    def terminate_child(self, data: st.DataObject) -> None:
        assert self.model is not None and self.sup is not None
        cid = data.draw(st.sampled_from(self.running_children()))
        expected = self.model.terminate(cid)
        self.journal.clear()
        self.trio.run(otpy.terminate_child, self.sup, cid)
        assert self.journal.events == expected

    def stopped_children(self) -> list[str]:
        assert self.model is not None
        return [c.id for c in self.model.children if not c.running]

    @precondition(lambda self: self.alive() and self.stopped_children())
    @rule(data=st.data())
    def restart_child(self, data: st.DataObject) -> None:
        assert self.model is not None and self.sup is not None
        cid = data.draw(st.sampled_from(self.stopped_children()))
        expected = self.model.restart(cid)
        self.journal.clear()
        self.trio.run(otpy.restart_child, self.sup, cid)
        assert self.journal.events == expected

    @rule(seconds=st.sampled_from([0.25, 1.0, 3.0]))
    def time_passes(self, seconds: float) -> None:
        assert self.model is not None
        self.model.now += seconds
        self.trio.run(_jump, self.trio.clock, seconds)

    @invariant()
    def matches_model(self) -> None:
        if self.model is None or self.sup is None:
            return
        if self.model.dead:
            reason = self.trio.run(self.sup.wait)
            assert isinstance(reason.error, GaveUp)
            return
        infos = self.trio.run(otpy.which_children, self.sup)
        assert [i.id for i in infos] == [c.id for c in self.model.children]
        assert [i.ref is not None for i in infos] == [c.running for c in self.model.children]
        assert all(i.ref is None or i.ref.alive for i in infos)

    def teardown(self) -> None:
        try:
            if self.sup is not None and self.sup.alive:
                self.trio.run(otpy.stop, self.sup)
        finally:
            self.trio.close()
            logging.getLogger("otpy").setLevel(logging.NOTSET)


async def _jump(clock: trio.testing.MockClock, seconds: float) -> None:
    clock.jump(seconds)
    await trio.lowlevel.checkpoint()


SupervisorMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_supervisor_matches_model = SupervisorMachine.TestCase
