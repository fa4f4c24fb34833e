"""GenServer behaviour: call/cast/info, deferred replies, failures, background tasks."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import otpy
from otpy.errors import (
    ActorExited,
    CallingSelf,
    CallTimeout,
    InitError,
    NameTaken,
    NoProcess,
    UnexpectedMessage,
)


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


async def test_call_cast_info_in_order() -> None:
    async with trio.open_nursery() as nursery:
        server = Counter(10)
        ref = await otpy.start(nursery, server)
        assert await otpy.call(ref, "get") == 10
        otpy.cast(ref, 5)
        otpy.cast(ref, 7)
        # One message at a time and in order: the call sees both casts.
        assert await otpy.call(ref, ("add", 1)) == 23
        otpy.send(ref, "hello")
        await server.info_event.wait()
        assert server.infos == ["hello"]
        assert await otpy.stop(ref) == otpy.NORMAL
        assert server.terminated == [otpy.NORMAL]
        assert not ref.alive


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


class FailingInit(otpy.GenServer):
    async def init(self) -> None:
        raise ConnectionError("database unreachable")


async def test_init_error_reaches_the_starter() -> None:
    async with trio.open_nursery() as nursery:
        with pytest.raises(InitError) as info:
            await otpy.start(nursery, FailingInit(), name="failing")
        assert isinstance(info.value.__cause__, ConnectionError)
        assert isinstance(info.value.reason.error, ConnectionError)
        # Its name was released.
        assert otpy.whereis("failing") is None


async def test_linked_crash_propagates_to_nursery() -> None:
    with pytest.raises(ExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            ref = await otpy.start(nursery, Counter())
            otpy.cast(ref, "crash")
    assert info.group_contains(ValueError, match="cast crash")


async def test_unlinked_crash_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Counter(), link=False)
        otpy.cast(ref, "crash")
        reason = await ref.wait()
    assert isinstance(reason.error, ValueError)
    records = [r for r in caplog.records if getattr(r, "event", None) == "actor_crashed"]
    assert len(records) == 1
    assert records[0].exc_info is not None


async def test_unexpected_call_crashes_server() -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Counter(), link=False)
        with pytest.raises(ActorExited) as info:
            await otpy.call(ref, "unknown request")
        assert isinstance(info.value.reason.error, UnexpectedMessage)


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


class Reader(otpy.GenServer):
    """A server with a background task that feeds it messages, like a socket reader."""

    def __init__(self, source: trio.MemoryReceiveChannel[Any]) -> None:
        self.source = source
        self.lines: list[str] = []
        self.reader_cancelled = False
        self.tasks_alive_in_terminate: bool | None = None

    async def init(self) -> None:
        self.start_soon(self._read)

    async def _read(self) -> None:
        try:
            async for item in self.source:
                if item == "boom":
                    raise OSError("socket closed")
                otpy.send(self.ref, ("line", item))
        except trio.Cancelled:
            self.reader_cancelled = True
            raise

    async def handle_info(self, message: Any) -> None:
        self.lines.append(message[1])

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return list(self.lines)

    async def terminate(self, reason: otpy.ExitReason) -> None:
        self.tasks_alive_in_terminate = not self.reader_cancelled
        self.terminate_reason = reason


async def test_background_task_feeds_server_and_stops_with_it() -> None:
    send_ch, recv_ch = trio.open_memory_channel[Any](10)
    async with trio.open_nursery() as nursery:
        server = Reader(recv_ch)
        ref = await otpy.start(nursery, server)
        await send_ch.send("a")
        await send_ch.send("b")
        await trio.testing.wait_all_tasks_blocked()
        assert await otpy.call(ref, "lines") == ["a", "b"]
        await otpy.stop(ref)
    assert server.reader_cancelled
    assert server.tasks_alive_in_terminate is True  # graceful stop: terminate before cancel


async def test_background_task_crash_crashes_server_with_its_exception() -> None:
    send_ch, recv_ch = trio.open_memory_channel[Any](10)
    async with trio.open_nursery() as nursery:
        server = Reader(recv_ch)
        ref = await otpy.start(nursery, server, link=False)
        await send_ch.send("boom")
        reason = await ref.wait()
    assert isinstance(reason.error, OSError)
    # terminate still runs after a crash, with the crash as its reason.
    assert server.terminate_reason is reason


async def test_kill_skips_terminate() -> None:
    async with trio.open_nursery() as nursery:
        server = Counter()
        ref = await otpy.start(nursery, server)
        ref.kill()
        assert await ref.wait() is otpy.KILLED
    assert server.terminated == []


async def test_server_instance_cannot_start_twice() -> None:
    async with trio.open_nursery() as nursery:
        server = Counter()
        ref = await otpy.start(nursery, server)
        with pytest.raises(RuntimeError, match="already started"):
            await otpy.start(nursery, server)
        await otpy.stop(ref)


async def test_stop_from_handler_replies_first() -> None:
    async with trio.open_nursery() as nursery:
        server = Counter()
        ref = await otpy.start(nursery, server)
        assert await otpy.call(ref, "stop") == "stopping"
        assert await ref.wait() is otpy.NORMAL
        assert server.terminated == [otpy.NORMAL]


async def test_named_server_and_name_taken() -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Counter(3), name="counter")
        assert otpy.whereis("counter") is ref
        assert await otpy.call("counter", "get") == 3
        with pytest.raises(NameTaken) as info:
            await otpy.start(nursery, Counter(), name="counter")
        assert info.value.ref is ref
        await otpy.stop("counter")
        assert otpy.whereis("counter") is None


async def test_task_server_runs_function_and_stops_normally() -> None:
    ran = trio.Event()

    async def job() -> None:
        ran.set()

    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, otpy.TaskServer(job))
        assert await ref.wait() is otpy.NORMAL
    assert ran.is_set()


async def test_task_server_waits_for_started() -> None:
    async def job(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, otpy.TaskServer(job, wait_started=True))
        assert ref.alive
        await otpy.stop(ref)
        assert ref.exit_reason is otpy.NORMAL


class Ticker(otpy.GenServer):
    def __init__(self) -> None:
        self.ticks: list[tuple[float, Any]] = []
        self.timer: otpy.Timer | None = None

    async def init(self) -> None:
        self.send_after(1, "tick")
        self.timer = self.send_after(2, "never")

    async def handle_info(self, message: Any) -> None:
        self.ticks.append((trio.current_time(), message))
        if message == "tick":
            assert self.timer is not None
            assert self.timer.cancel() is True
            assert self.timer.cancel() is False
            self.send_after(3, "tock")


@pytest.mark.trio
async def test_send_after_and_cancel(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        server = Ticker()
        t0 = trio.current_time()
        ref = await otpy.start(nursery, server)
        await trio.sleep(10)
        assert [(round(t - t0), m) for t, m in server.ticks] == [(1, "tick"), (4, "tock")]
        await otpy.stop(ref)


def test_sync_handlers_are_rejected_at_class_definition() -> None:
    with pytest.raises(TypeError, match="handle_call must be a coroutine function"):

        class Wrong(otpy.GenServer):
            def handle_call(self, request: Any, from_: otpy.From) -> Any:
                return request
