"""The process API (otpy.process): calls and their timers, deferred replies, monitors and links."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from rt_helpers import Counter, Watcher

import otpy
from otpy.errors import ActorExited, CallingSelf, CallTimeout, ExitSignal, NoProcess, NotAnActor


async def test_call_from_many_plain_tasks_serialised() -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Counter())
        results: list[int] = []

        async def adder() -> None:
            results.append(await otpy.call(ref, ("add", 1)))

        async with trio.open_nursery() as callers:
            for _ in range(50):
                callers.start_soon(adder)
        assert sorted(results) == list(range(1, 51))
        await otpy.stop(ref)


async def test_call_to_server_that_crashes_raises_at_once_with_reason() -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Counter(), link=False)
        with trio.fail_after(1):  # far below the call timeout: it must not wait for it
            with pytest.raises(ActorExited) as info:
                await otpy.call(ref, "crash", timeout=60)
        assert isinstance(info.value.reason.error, ValueError)
        assert info.value.reason.abnormal
        assert ref.exit_reason is info.value.reason


async def test_pending_call_fails_when_server_dies_during_it() -> None:
    async with trio.open_nursery() as nursery:
        server = Counter()
        ref = await otpy.start(nursery, server, link=False)

        async def crasher() -> None:
            otpy.cast(ref, "crash")

        # The call is queued behind a crash: it must fail immediately, not time out.
        otpy.cast(ref, "crash")
        with trio.fail_after(1), pytest.raises(ActorExited) as info:
            await otpy.call(ref, "get", timeout=60)
        assert str(info.value.reason) == "ValueError: cast crash"


async def test_call_to_dead_server_raises_its_exit_reason() -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Counter())
        await otpy.stop(ref, otpy.ExitReason.shutdown("bye"))
        with pytest.raises(ActorExited) as info:
            await otpy.call(ref, "get")
        assert info.value.reason.kind == "shutdown"
        assert info.value.reason.detail == "bye"


async def test_call_unknown_name_is_noproc() -> None:
    with pytest.raises(NoProcess) as info:
        await otpy.call("nobody", "get")
    assert info.value.reason is otpy.NOPROC
    # cast never fails; send to an unknown name does.
    otpy.cast("nobody", 1)
    with pytest.raises(NoProcess):
        otpy.send("nobody", 1)


@pytest.mark.trio
async def test_call_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Counter())
        start = trio.current_time()
        with pytest.raises(CallTimeout) as info:
            await otpy.call(ref, ("sleep", 10), timeout=2)
        assert trio.current_time() - start == pytest.approx(2)
        assert info.value.timeout == 2
        assert isinstance(info.value, TimeoutError)
        # The late reply is dropped; the server still works.
        assert await otpy.call(ref, "get", timeout=20) == 0
        await otpy.stop(ref)


@pytest.mark.trio
async def test_many_call_timeouts_fire_at_their_own_deadlines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Deferred())
        fired: dict[str, float] = {}
        t0 = trio.current_time()

        async def caller(label: str, seconds: float) -> None:
            try:
                await otpy.call(ref, "wait", timeout=seconds)
            except CallTimeout:
                fired[label] = trio.current_time() - t0

        async with trio.open_nursery() as callers:
            for label, seconds in [("a", 3.0), ("b", 1.0), ("c", 3.0), ("d", 2.0)]:
                callers.start_soon(caller, label, seconds)
            await trio.sleep(0.5)
            # A later call with a shorter timeout still fires first.
            callers.start_soon(caller, "e", 0.25)
        assert fired == pytest.approx({"a": 3, "b": 1, "c": 3, "d": 2, "e": 0.75})
        # Answered calls never time out afterwards; zero timeout fails at once.
        otpy.cast(ref, "flush")
        assert await otpy.call(ref, "count", timeout=1) == 0
        await trio.sleep(5)
        with pytest.raises(CallTimeout):
            await otpy.call(ref, "count", timeout=0)
        assert ref._callers == set()
        await otpy.stop(ref)


@pytest.mark.trio
async def test_call_timers_forget_timeouts_no_longer_in_use(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from otpy.process import _TIMERS

    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Counter())
        # Computed timeouts (a remaining deadline) are all different.
        for i in range(100):
            assert await otpy.call(ref, "get", timeout=1 + i / 1000) == 0
        await trio.sleep(3)
        assert _TIMERS.get()._buckets == {}
        await otpy.stop(ref)


async def test_outer_cancellation_of_call_is_not_a_timeout() -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Counter())
        with trio.CancelScope() as scope:
            scope.cancel()
            await otpy.call(ref, "get")
        assert scope.cancelled_caught
        assert await otpy.call(ref, "get") == 0
        await otpy.stop(ref)


class Deferred(otpy.GenServer):
    """Parks callers until a 'release' message arrives, then answers them all."""

    def __init__(self) -> None:
        self.waiting: list[otpy.From] = []

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        if request == "wait":
            self.waiting.append(from_)
            return otpy.NO_REPLY
        if request == "bad":
            otpy.reply_error(from_, KeyError("no such thing"))
            return otpy.NO_REPLY
        return len(self.waiting)

    async def handle_cast(self, request: Any) -> None:
        for i, from_ in enumerate(self.waiting):
            otpy.reply(from_, (request, i))
        self.waiting.clear()


async def test_deferred_reply() -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Deferred())
        results: list[Any] = []

        async def waiter() -> None:
            results.append(await otpy.call(ref, "wait"))

        for _ in range(3):
            nursery.start_soon(waiter)
        # The server keeps serving other calls while replies are deferred.
        with trio.fail_after(1):
            while await otpy.call(ref, "count") < 3:
                await trio.testing.wait_all_tasks_blocked()
        otpy.cast(ref, "go")
        with trio.fail_after(1):
            while len(results) < 3:
                await trio.testing.wait_all_tasks_blocked()
        assert sorted(results) == [("go", 0), ("go", 1), ("go", 2)]
        # reply_error makes the caller raise without crashing the server.
        with pytest.raises(KeyError):
            await otpy.call(ref, "bad")
        assert ref.alive
        await otpy.stop(ref)


async def test_deferred_caller_fails_when_server_dies() -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Deferred(), link=False)

        async def killer() -> None:
            await trio.testing.wait_all_tasks_blocked()
            ref.kill()

        nursery.start_soon(killer)
        with trio.fail_after(1), pytest.raises(ActorExited) as info:
            await otpy.call(ref, "wait", timeout=None)
        assert info.value.reason is otpy.KILLED


class SelfCaller(otpy.GenServer):
    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        if request == "self":
            return await otpy.call(self.ref, "other")
        if request == "from_task":
            result: list[Any] = []
            done = trio.Event()

            async def task() -> None:
                # A background task is a different task: it may call its own server.
                result.append(await otpy.call(self.ref, "other"))
                done.set()

            self.start_soon(task)
            return "started"
        if request == "result":
            return self.result
        return "other-reply"

    async def handle_info(self, message: Any) -> None:
        self.result = message


async def test_calling_self_is_an_error_not_a_deadlock() -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, SelfCaller(), link=False)
        with pytest.raises(ActorExited) as info:
            await otpy.call(ref, "self")
        assert isinstance(info.value.reason.error, CallingSelf)


class Trapper(Watcher):
    trap_exits = True


async def test_monitor_delivers_down_with_reason() -> None:
    async with trio.open_nursery() as nursery:
        watcher = Watcher()
        w = await otpy.start(nursery, watcher)
        target = await otpy.start(nursery, Watcher(), link=False)
        mon = await otpy.call(w, ("monitor", target))
        otpy.cast(target, "crash")
        await watcher.got.wait()
        (down,) = watcher.received
        assert isinstance(down, otpy.Down)
        assert down.monitor is mon and down.ref is target
        assert isinstance(down.reason.error, LookupError)
        await otpy.stop(w)


async def test_monitor_of_dead_or_unknown_actor_fires_at_once() -> None:
    async with trio.open_nursery() as nursery:
        watcher = Watcher()
        w = await otpy.start(nursery, watcher)
        target = await otpy.start(nursery, Watcher())
        await otpy.stop(target, otpy.ExitReason.shutdown("done"))
        await otpy.call(w, ("monitor", target))
        await otpy.call(w, ("monitor", "no-such-name"))
        await trio.testing.wait_all_tasks_blocked()
        reasons = [m.reason for m in watcher.received]
        assert reasons[0].kind == "shutdown" and reasons[0].detail == "done"
        assert reasons[1] is otpy.NOPROC
        await otpy.stop(w)


async def test_demonitor_prevents_down() -> None:
    async with trio.open_nursery() as nursery:
        watcher = Watcher()
        w = await otpy.start(nursery, watcher)
        target = await otpy.start(nursery, Watcher())
        mon = await otpy.call(w, ("monitor", target))
        assert await otpy.call(w, ("demonitor", mon)) is True
        await otpy.stop(target)
        await trio.testing.wait_all_tasks_blocked()
        assert watcher.received == []
        assert await otpy.call(w, ("demonitor", mon)) is False
        await otpy.stop(w)


async def test_monitor_from_plain_task_needs_an_actor_but_wait_works() -> None:
    async with trio.open_nursery() as nursery:
        target = await otpy.start(nursery, Watcher())
        with pytest.raises(NotAnActor):
            otpy.monitor(target)
        # A plain task waits on the ref instead.
        otpy.cast(target, "exit")
        assert await target.wait() is otpy.NORMAL


async def test_link_kills_the_partner_on_crash() -> None:
    async with trio.open_nursery() as nursery:
        a = await otpy.start(nursery, Watcher(), link=False)
        b_server = Watcher()
        b = await otpy.start(nursery, b_server, link=False)
        await otpy.call(a, ("link", b))
        otpy.cast(a, "crash")
        reason = await b.wait()
        assert isinstance(reason.error, ExitSignal)
        assert reason.error.source is a
        assert isinstance(reason.error.reason.error, LookupError)


async def test_link_exit_signal_reaches_the_nursery_of_a_linked_start() -> None:
    with pytest.raises(ExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            a = await otpy.start(nursery, Watcher(), link=False)
            await otpy.start(nursery, Watcher(), name="partner")  # link=True: errors surface
            await otpy.call(a, ("link", "partner"))
            otpy.cast(a, "crash")
    assert info.group_contains(ExitSignal)


async def test_link_ignores_normal_exit_and_unlink_works() -> None:
    async with trio.open_nursery() as nursery:
        a = await otpy.start(nursery, Watcher())
        b = await otpy.start(nursery, Watcher(), link=False)
        c = await otpy.start(nursery, Watcher())
        await otpy.call(a, ("link", b))
        await otpy.call(c, ("link", b))
        await otpy.call(c, ("unlink", b))
        otpy.cast(a, "exit")
        await a.wait()
        otpy.cast(b, "crash")
        await b.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert c.alive  # unlinked before b crashed
        await otpy.stop(c)


async def test_trap_exits_turns_link_exits_into_messages() -> None:
    async with trio.open_nursery() as nursery:
        trapper = Trapper()
        t = await otpy.start(nursery, trapper)
        b = await otpy.start(nursery, Watcher(), link=False)
        await otpy.call(t, ("link", b))
        otpy.cast(b, "crash")
        await trapper.got.wait()
        (message,) = trapper.received
        assert isinstance(message, otpy.Exit) and message.ref is b
        assert isinstance(message.reason.error, LookupError)
        assert t.alive
        await otpy.stop(t)


async def test_link_to_dead_actor_acts_at_once() -> None:
    async with trio.open_nursery() as nursery:
        dead = await otpy.start(nursery, Watcher(), link=False)
        otpy.cast(dead, "crash")
        await dead.wait()
        b = await otpy.start(nursery, Watcher(), link=False)
        await otpy.call(b, ("link", dead))
        assert isinstance((await b.wait()).error, ExitSignal)


@pytest.mark.trio
async def test_an_answered_call_leaves_no_deadline_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from otpy.process import _TIMERS

    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Counter())
        assert await otpy.call(ref, "get", timeout=30) == 0
        # Removed with the reply (the From keeps its bucket), not at the deadline.
        assert len(_TIMERS.get()) == 0
        assert trio.current_time() == 0
        await otpy.stop(ref)


@pytest.mark.trio
async def test_a_timed_out_call_is_forgotten_by_its_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Counter())
        with pytest.raises(CallTimeout):
            await otpy.call(ref, ("sleep", 10), timeout=1)
        assert ref._callers == set()  # the caller is not failed again when the server exits
        await otpy.stop(ref)
