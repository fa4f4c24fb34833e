"""Supervisors trap exits: a linked child or outsider crashing never takes a supervisor down."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing
from rt_helpers import HangOnRestart, Journal, Worker, child_ref, running, worker_spec

import otpy
import otpy.errors
from otpy.errors import GaveUp


class LinkedWorker(Worker):
    """A worker that links to its supervisor in ``init``, as many Erlang workers do."""

    async def init(self) -> None:
        await super().init()
        assert self.ref.parent is not None
        self.link(self.ref.parent)


def linked_spec(cid: Any, journal: Journal, **kwargs: Any) -> otpy.ChildSpec:
    return otpy.ChildSpec(id=cid, start=lambda: LinkedWorker(cid, journal), **kwargs)


class Outsider(otpy.GenServer):
    """Links to any actor on request and crashes on request."""

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        self.link(request)
        return None

    async def handle_cast(self, request: Any) -> None:
        raise RuntimeError("outsider crashed")


async def test_child_linked_to_its_supervisor_crashing_is_restarted_by_the_strategy() -> None:
    journal = Journal()
    specs = [linked_spec("a", journal), worker_spec("b", journal)]
    async with trio.open_nursery() as nursery:
        # intensity=1: if the Down and the Exit both counted, this crash would give up.
        sup = await otpy.start(
            nursery, otpy.Supervisor(specs, strategy="one_for_all", intensity=1), link=False
        )
        before = await running(sup)
        journal.clear()
        a = await child_ref(sup, "a")
        otpy.cast(a, "crash")
        await a.wait()
        after = await running(sup)
        assert sup.alive
        # one_for_all: the sibling ran its terminate, then both started again in order.
        expected = [("stop", "a"), ("stop", "b"), ("start", "a"), ("start", "b")]
        assert journal.events == expected
        assert after["a"] is not before["a"] and after["b"] is not before["b"]
        await otpy.stop(sup)
        assert journal.stops()[-2:] == ["b", "a"]


async def test_dynamic_child_linked_to_its_supervisor_is_restarted_once() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.DynamicSupervisor(intensity=1), link=False)
        other = await otpy.start_child(sup, worker_spec("other", journal))
        a = await otpy.start_child(sup, linked_spec("a", journal))
        otpy.cast(a, "crash")
        await a.wait()
        refs = [i.ref for i in await otpy.which_children(sup)]
        assert sup.alive and other in refs and a not in refs and None not in refs
        await otpy.stop(sup)
        assert other.exit_reason is otpy.SHUTDOWN


async def test_outside_linked_actor_crashing_leaves_supervisor_and_children_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="otpy.supervisor")
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([worker_spec("a", journal)]), link=False)
        before = await running(sup)
        outsider = await otpy.start(nursery, Outsider(), link=False)
        await otpy.call(outsider, sup)
        otpy.cast(outsider, "crash")
        await outsider.wait()
        assert await running(sup) == before  # answered after the Exit was handled
        assert sup.alive and journal.stops() == []
        (record,) = [r for r in caplog.records if getattr(r, "event", "") == "exit_signal_ignored"]
        assert record.levelno == logging.WARNING and repr(outsider) in record.getMessage()
        await otpy.stop(sup)
        assert journal.stops() == ["a"]


async def test_linked_child_crashing_too_often_still_escalates() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(
            nursery, otpy.Supervisor([linked_spec("a", journal)], intensity=2), link=False
        )
        for _ in range(3):
            a = await child_ref(sup, "a")
            otpy.cast(a, "crash")
            await a.wait()
            await trio.testing.wait_all_tasks_blocked()
        reason = await sup.wait()
        assert isinstance(reason.error, GaveUp)


async def test_child_stopped_by_its_supervisor_while_linked_is_not_an_outsider(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="otpy.supervisor")
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([linked_spec("a", journal)]), link=False)
        await otpy.terminate_child(sup, "a")
        await otpy.restart_child(sup, "a")
        await otpy.count_children(sup)
        assert not [r for r in caplog.records if getattr(r, "event", "") == "exit_signal_ignored"]
        await otpy.stop(sup)


def start_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", "") == "child_start_failed"]


@pytest.mark.parametrize("kind", ["static", "dynamic"])
async def test_a_start_failure_returned_to_its_caller_is_one_info_line(
    caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.DEBUG)
    journal = Journal()
    journal.init_failures["bad"] = 1
    async with trio.open_nursery() as nursery:
        server = otpy.Supervisor([]) if kind == "static" else otpy.DynamicSupervisor()
        sup = await otpy.start(nursery, server)
        with pytest.raises(otpy.errors.InitError):
            await otpy.start_child(sup, worker_spec("bad", journal))
        await otpy.stop(sup)
    (record,) = start_failures(caplog)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert "refuses to start" in record.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_failed_restart_nobody_waits_for_is_an_error_with_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="otpy.supervisor")
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([worker_spec("a", journal)], intensity=5))
        journal.init_failures["a"] = 1
        a = await child_ref(sup, "a")
        otpy.cast(a, "crash")
        await a.wait()
        await journal.wait_for(lambda: journal.starts().count("a") == 2)  # retried and up
        await otpy.stop(sup)
    (record,) = start_failures(caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None


async def test_a_hanging_one_for_one_restart_does_not_block_a_static_supervisor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    gate = trio.Event()
    runs: list[int] = []
    flaky = otpy.ChildSpec(id="flaky", start=lambda: HangOnRestart("flaky", journal, gate, runs))
    specs = [worker_spec("other", journal), flaky]
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor(specs))
        first = await child_ref(sup, "flaky")
        other = await child_ref(sup, "other")
        otpy.cast(first, "crash")
        await first.wait()
        with trio.fail_after(1):  # the restart hangs in init; the supervisor still serves
            assert await running(sup) == {"other": other, "flaky": None}
            with pytest.raises(otpy.errors.ChildRunning, match="restarting"):
                await otpy.restart_child(sup, "flaky")
            await otpy.terminate_child(sup, "flaky")  # cancels the restart in flight
            assert await running(sup) == {"other": other, "flaky": None}
        assert len(runs) == 2
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert await running(sup) == {"other": other, "flaky": None}  # it stayed cancelled
        assert other.alive
        await otpy.stop(sup)
