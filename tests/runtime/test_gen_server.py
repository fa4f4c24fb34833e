"""GenServer behaviour and its runner: dispatch, failures, background tasks, TaskServer."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from rt_helpers import Counter

import otpy
from otpy.errors import (
    ActorExited,
    InitError,
    NameTaken,
    UnexpectedMessage,
)


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


def test_the_process_api_still_imports_from_gen_server_with_a_warning() -> None:
    import otpy.gen_server
    import otpy.process

    for name in ("call", "cast", "send", "stop", "monitor", "demonitor", "link", "unlink"):
        with pytest.warns(DeprecationWarning, match=rf"otpy\.gen_server\.{name} moved"):
            assert getattr(otpy.gen_server, name) is getattr(otpy.process, name)
    for name in ("reply", "reply_error", "From", "Timer", "DEFAULT_CALL_TIMEOUT"):
        with pytest.warns(DeprecationWarning, match=rf"to otpy\.process\.{name};"):
            assert getattr(otpy.gen_server, name) is getattr(otpy.process, name)


def test_child_spec_declares_a_worker_and_a_supervisor_class_declares_a_supervisor() -> None:
    assert Counter.child_spec().type is otpy.WORKER
    assert otpy.Supervisor.child_spec([], id="s").type is otpy.SUPERVISOR
    assert otpy.DynamicSupervisor.child_spec(id="d").type is otpy.SUPERVISOR
    assert otpy.DynamicSupervisor.child_spec(id="d").shutdown is otpy.INFINITY
