"""Supervisor: strategies, restart types, shutdown kinds, intensity, escalation, reports."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing
from rt_helpers import Journal, Worker, child_ref, crash, running, worker_spec

import otpy
from otpy.errors import (
    ActorExited,
    ChildNotFound,
    ChildRunning,
    DuplicateChild,
    GaveUp,
    InitError,
)


def three(journal: Journal, **kwargs: Any) -> list[otpy.ChildSpec]:
    return [worker_spec(cid, journal, **kwargs) for cid in ("a", "b", "c")]


async def test_children_start_in_order_and_stop_in_reverse() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor(three(journal)))
        # start() returned only after every child's init finished.
        assert journal.starts() == ["a", "b", "c"]
        assert list(await running(sup)) == ["a", "b", "c"]
        refs = await running(sup)
        await otpy.stop(sup)
    assert journal.stops() == ["c", "b", "a"]
    assert all(ref is not None and ref.exit_reason is otpy.SHUTDOWN for ref in refs.values())


async def test_one_for_one_restarts_only_the_crashed_child() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor(three(journal)))
        before = await running(sup)
        journal.clear()
        old = await crash(sup, "b")
        after = await running(sup)
        assert journal.events == [("stop", "b"), ("start", "b")]  # terminate ran after the crash
        assert after["a"] is before["a"] and after["c"] is before["c"]
        assert after["b"] is not old and after["b"] is not None and after["b"].alive
        await otpy.stop(sup)


async def test_one_for_all_restarts_everyone_in_order() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor(three(journal), strategy=otpy.ONE_FOR_ALL))
        before = await running(sup)
        journal.clear()
        await crash(sup, "b")
        after = await running(sup)
        # b's own terminate, then the others stopped in reverse order, then all start in order.
        assert journal.events == [
            ("stop", "b"),
            ("stop", "c"),
            ("stop", "a"),
            ("start", "a"),
            ("start", "b"),
            ("start", "c"),
        ]
        assert all(after[k] is not before[k] for k in "abc")
        await otpy.stop(sup)


async def test_rest_for_one_restarts_the_crashed_and_later_children() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor(three(journal), strategy="rest_for_one"))
        before = await running(sup)
        journal.clear()
        await crash(sup, "b")
        after = await running(sup)
        assert journal.events == [("stop", "b"), ("stop", "c"), ("start", "b"), ("start", "c")]
        assert after["a"] is before["a"]
        assert after["b"] is not before["b"] and after["c"] is not before["c"]
        await otpy.stop(sup)


async def test_restart_types() -> None:
    journal = Journal()
    specs = [
        worker_spec("perm", journal, restart=otpy.PERMANENT),
        worker_spec("trans", journal, restart=otpy.TRANSIENT),
        worker_spec("temp", journal, restart="temporary"),
    ]
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor(specs, intensity=10))
        refs = await running(sup)
        # A normal exit: only the permanent child comes back.
        for cid in ("perm", "trans", "temp"):
            ref = refs[cid]
            assert ref is not None
            await otpy.call(ref, "exit")
            await ref.wait()
        now = await running(sup)
        assert now["perm"] is not None and now["perm"] is not refs["perm"]
        assert now["trans"] is None  # kept as a spec, not running
        assert "temp" not in now  # temporary specs are forgotten
        counts = await otpy.count_children(sup)
        assert counts == otpy.ChildCounts(specs=2, active=1, supervisors=0, workers=2)
        # A crash restarts the transient child too (restart_child first, it is stopped).
        trans = await otpy.restart_child(sup, "trans")
        otpy.cast(trans, "crash")
        await trans.wait()
        now = await running(sup)
        assert now["trans"] is not None and now["trans"] is not trans
        await otpy.stop(sup)


@pytest.mark.trio
async def test_shutdown_timeout_cancels_slow_terminate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    servers: list[Worker] = []

    def slow() -> Worker:
        servers.append(Worker("slow", journal, terminate_time=100))
        return servers[-1]

    spec = otpy.ChildSpec(id="slow", start=slow, shutdown=3)
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([spec]))
        ref = await child_ref(sup, "slow")
        t0 = trio.current_time()
        await otpy.terminate_child(sup, "slow")
        assert trio.current_time() - t0 == pytest.approx(3)
        assert ref.exit_reason is otpy.KILLED
        assert journal.stops() == ["slow"]  # terminate started...
        assert not servers[0].terminate_finished  # ...and was cut off at the deadline
        await otpy.stop(sup)


@pytest.mark.trio
async def test_shutdown_infinity_waits_for_terminate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    spec = worker_spec("slow", journal, terminate_time=100, shutdown=otpy.INFINITY)
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([spec]))
        ref = await child_ref(sup, "slow")
        t0 = trio.current_time()
        await otpy.terminate_child(sup, "slow")
        assert trio.current_time() - t0 == pytest.approx(100)
        assert ref.exit_reason is otpy.SHUTDOWN
        await otpy.stop(sup)


@pytest.mark.trio
async def test_brutal_kill_skips_terminate(autojump_clock: trio.testing.MockClock) -> None:
    journal = Journal()
    spec = worker_spec("w", journal, terminate_time=100, shutdown="brutal_kill")
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([spec]))
        ref = await child_ref(sup, "w")
        t0 = trio.current_time()
        await otpy.stop(sup)
        assert trio.current_time() == t0
        assert ref.exit_reason is otpy.KILLED
    assert journal.stops() == []


async def test_supervisor_child_defaults_to_infinity_shutdown() -> None:
    spec = otpy.Supervisor.child_spec([], id="inner")
    assert spec.type is otpy.SUPERVISOR and spec.shutdown is otpy.INFINITY
    assert otpy.ChildSpec(id="w", start=lambda: Worker("w", Journal())).shutdown == 5.0


async def test_intensity_exceeded_gives_up_and_reports(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="otpy")
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(
            nursery, otpy.Supervisor(three(journal), intensity=2, period=60), link=False
        )
        await crash(sup, "a")
        await crash(sup, "a")
        journal.clear()
        ref = await child_ref(sup, "a")
        otpy.cast(ref, "crash")
        reason = await sup.wait()
    assert isinstance(reason.error, GaveUp)
    # It stopped the remaining children in reverse order before exiting.
    assert journal.stops() == ["a", "c", "b"]
    gave_up = [r for r in caplog.records if getattr(r, "event", "") == "supervisor_gave_up"]
    assert len(gave_up) == 1 and vars(gave_up[0])["child_id"] == "a"
    assert gave_up[0].levelno == logging.ERROR


@pytest.mark.trio
async def test_intensity_window_slides(autojump_clock: trio.testing.MockClock) -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(
            nursery, otpy.Supervisor(three(journal), intensity=2, period=10), link=False
        )
        await crash(sup, "a")
        await trio.sleep(6)
        await crash(sup, "b")
        await trio.sleep(5)  # the first restart is now older than the period
        await crash(sup, "c")
        assert sup.alive
        await trio.sleep(1)
        otpy.cast(await child_ref(sup, "a"), "crash")  # third restart within 10 s: t=6, 11, 12
        reason = await sup.wait()
        assert isinstance(reason.error, GaveUp)
        assert trio.current_time() == pytest.approx(12)


async def test_escalation_to_parent_supervisor() -> None:
    journal = Journal()
    inner = otpy.Supervisor.child_spec(
        [worker_spec("x", journal)], id="inner", intensity=0, period=5
    )
    outer_specs = [worker_spec("first", journal), inner, worker_spec("last", journal)]
    async with trio.open_nursery() as nursery:
        outer = await otpy.start(
            nursery, otpy.Supervisor(outer_specs, strategy="rest_for_one", intensity=5)
        )
        before = await running(outer)
        inner_ref = before["inner"]
        assert inner_ref is not None
        journal.clear()
        x = await child_ref(inner_ref, "x")
        otpy.cast(x, "crash")
        reason = await inner_ref.wait()
        assert isinstance(reason.error, GaveUp)
        await otpy.count_children(outer)
        after = await running(outer)
        # rest_for_one on the outer: the inner supervisor and 'last' restarted, 'first' kept.
        assert after["first"] is before["first"]
        assert after["inner"] is not inner_ref and after["last"] is not before["last"]
        assert journal.events == [
            ("stop", "x"),
            ("stop", "last"),
            ("start", "x"),
            ("start", "last"),
        ]
        journal.clear()
        await otpy.stop(outer)
    # Nested shutdown: reverse order, depth first.
    assert journal.stops() == ["last", "x", "first"]


async def test_child_failing_to_start_fails_supervisor_start() -> None:
    journal = Journal()
    journal.init_failures["c"] = 1
    async with trio.open_nursery() as nursery:
        with pytest.raises(InitError) as info:
            await otpy.start(nursery, otpy.Supervisor(three(journal)))
    child_error = info.value.__cause__
    assert isinstance(child_error, InitError)
    assert journal.starts() == ["a", "b"]
    assert journal.stops() == ["b", "a"]


async def test_failed_restart_is_retried_until_it_works() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor(three(journal), intensity=5))
        journal.init_failures["b"] = 2
        old = await crash(sup, "b")
        # Two failed inits, each retried as a new restart, then it runs again.
        with trio.fail_after(2):
            await journal.wait_for(lambda: journal.starts().count("b") == 2)
        assert journal.init_failures["b"] == 0
        assert (await running(sup))["b"] is not old
        assert sup.alive
        await otpy.stop(sup)


async def test_failed_restarts_count_towards_intensity() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor(three(journal), intensity=3), link=False)
        journal.init_failures["b"] = 100
        ref = await child_ref(sup, "b")
        otpy.cast(ref, "crash")
        reason = await sup.wait()
        assert isinstance(reason.error, GaveUp)
        assert journal.init_failures["b"] == 100 - 3


@pytest.mark.trio
async def test_restart_backoff_is_exponential_and_capped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    backoff = otpy.Backoff(initial=1, maximum=4, multiplier=2, reset_after=100)
    spec = worker_spec("db", journal, backoff=backoff)
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([spec], intensity=100, period=1000))
        delays = []
        for _ in range(5):
            ref = await child_ref(sup, "db")
            otpy.cast(ref, "crash")
            await ref.wait()
            t0 = trio.current_time()
            starts = len(journal.starts())
            await journal.wait_for(lambda: len(journal.starts()) > starts)  # noqa: B023
            delays.append(round(trio.current_time() - t0, 1))
        assert delays == [1, 2, 4, 4, 4]
        # A child that stayed up for reset_after starts over at the initial delay.
        await trio.sleep(101)
        ref = await child_ref(sup, "db")
        otpy.cast(ref, "crash")
        await ref.wait()
        t0 = trio.current_time()
        starts = len(journal.starts())
        await journal.wait_for(lambda: len(journal.starts()) > starts)
        assert round(trio.current_time() - t0, 1) == 1
        await otpy.stop(sup)


@pytest.mark.trio
async def test_backoff_keeps_growing_while_restarts_fail(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    backoff = otpy.Backoff(initial=1, maximum=4, reset_after=100)
    spec = worker_spec("db", journal, backoff=backoff)
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([spec], intensity=100, period=1000))
        await trio.sleep(200)  # a long healthy run: the next crash starts at `initial`
        journal.init_failures["db"] = 3  # ...but then the database stays down for a while
        ref = await child_ref(sup, "db")
        otpy.cast(ref, "crash")
        await ref.wait()
        t0 = trio.current_time()
        await journal.wait_for(lambda: journal.starts().count("db") == 2)
        # 1 s, then 2 s and 4 s after failed starts, then the capped 4 s.
        assert trio.current_time() - t0 == pytest.approx(1 + 2 + 4 + 4)
        await otpy.stop(sup)


async def test_management_calls() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor(three(journal)))
        await otpy.terminate_child(sup, "b")
        assert (await running(sup))["b"] is None
        with pytest.raises(ChildRunning):
            await otpy.delete_child(sup, "a")
        with pytest.raises(ChildNotFound):
            await otpy.terminate_child(sup, "zzz")
        new_b = await otpy.restart_child(sup, "b")
        assert new_b.alive and (await running(sup))["b"] is new_b
        with pytest.raises(ChildRunning):
            await otpy.restart_child(sup, "b")
        await otpy.terminate_child(sup, "b")
        await otpy.delete_child(sup, "b")
        assert list(await running(sup)) == ["a", "c"]
        d = await otpy.start_child(sup, worker_spec("d", journal))
        assert await otpy.call(d, "ping") == ("pong", "d")
        with pytest.raises(DuplicateChild):
            await otpy.start_child(sup, worker_spec("d", journal))
        journal.init_failures["e"] = 1
        with pytest.raises(InitError):
            await otpy.start_child(sup, worker_spec("e", journal))
        assert list(await running(sup)) == ["a", "c", "d"]
        assert await otpy.Supervisor.which_children(sup) == await otpy.which_children(sup)
        assert sup.alive  # none of the errors above hurt the supervisor
        await otpy.stop(sup)


async def test_named_child_is_reregistered_after_restart() -> None:
    journal = Journal()
    spec = worker_spec("w", journal, name="the-worker")
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([spec]), name="sup")
        old = otpy.whereis("the-worker")
        assert old is not None
        await crash("sup", "w")
        new = otpy.whereis("the-worker")
        assert new is not None and new is not old
        assert await otpy.call("the-worker", "ping") == ("pong", "w")
        await otpy.stop(sup)
    assert otpy.whereis("the-worker") is None and otpy.whereis("sup") is None


async def test_reports_carry_structured_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="otpy")
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([worker_spec("w", journal)]), name="S")
        await crash(sup, "w")
        await otpy.stop(sup)
    by_event: dict[str, list[logging.LogRecord]] = {}
    for record in caplog.records:
        by_event.setdefault(getattr(record, "event", ""), []).append(record)
    assert [vars(r)["child_id"] for r in by_event["child_started"]] == ["w"]
    crashed = by_event["child_crashed"][0]
    assert vars(crashed)["supervisor"] == "'S'" and vars(crashed)["child_id"] == "w"
    assert vars(crashed)["reason"] == "RuntimeError: w crashed on request"
    assert crashed.exc_info is not None and crashed.exc_info[0] is RuntimeError
    assert "Traceback" in caplog.text
    assert [vars(r)["child_id"] for r in by_event["child_restarted"]] == ["w"]
    assert vars(by_event["child_shutdown"][0])["reason"] == "shutdown"


async def test_call_to_supervised_child_that_crashes_raises_at_once() -> None:
    journal = Journal()

    class Crashy(Worker):
        async def handle_call(self, request: Any, from_: otpy.From) -> Any:
            if request == "crash":
                raise RuntimeError("boom")
            return await super().handle_call(request, from_)

    spec = otpy.ChildSpec(id="c", start=lambda: Crashy("c", journal))
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([spec]))
        ref = await child_ref(sup, "c")
        with trio.fail_after(1), pytest.raises(ActorExited):
            await otpy.call(ref, "crash", timeout=30)
        await otpy.stop(sup)


async def test_cancelling_the_tree_kills_everything_and_is_not_swallowed() -> None:
    journal = Journal()
    inner = otpy.Supervisor.child_spec([worker_spec("x", journal)], id="inner")
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            sup = await otpy.start(nursery, otpy.Supervisor([*three(journal), inner]))
            refs = await running(sup)
            inner_ref = refs["inner"]
            assert inner_ref is not None
            x = await child_ref(inner_ref, "x")
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert sup.exit_reason is otpy.KILLED
    assert all(r is not None and r.exit_reason is otpy.KILLED for r in refs.values())
    assert x.exit_reason is otpy.KILLED
    assert journal.stops() == []  # killed: no terminate ran


async def test_task_children_are_supervised_like_servers() -> None:
    runs: list[int] = []
    fail_now = trio.Event()
    finish = trio.Event()

    async def job(n: int) -> None:
        runs.append(n)
        if len(runs) == 1:
            await fail_now.wait()
            raise OSError("first run fails")
        await finish.wait()

    spec = otpy.ChildSpec(id="job", start=lambda: otpy.TaskServer(job, 7), restart="transient")
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([spec]))
        ref = await child_ref(sup, "job")
        fail_now.set()
        assert isinstance((await ref.wait()).error, OSError)
        await otpy.count_children(sup)
        second = await child_ref(sup, "job")
        assert second is not ref
        finish.set()
        assert await second.wait() is otpy.NORMAL
        await otpy.count_children(sup)
        assert runs == [7, 7]
        assert (await running(sup))["job"] is None  # transient + normal exit: not restarted
        await otpy.stop(sup)


@pytest.mark.trio
async def test_shutdown_timeout_is_reported(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal()
    spec = worker_spec("slow", journal, terminate_time=100, shutdown=1)
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([spec]), name="S2")
        await otpy.stop(sup)
    (record,) = [r for r in caplog.records if getattr(r, "event", "") == "child_shutdown_timeout"]
    assert record.levelno == logging.WARNING
    assert record.__dict__["child_id"] == "slow" and record.__dict__["supervisor"] == "'S2'"


async def test_gave_up_message_names_the_supervisor_once() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(
            nursery, otpy.Supervisor(three(journal), intensity=0), name="root", link=False
        )
        otpy.cast(await child_ref(sup, "a"), "crash")
        reason = await sup.wait()
    assert isinstance(reason.error, GaveUp)
    message = str(reason.error)
    assert message.startswith("supervisor 'root' gave up: more than 0 restarts in 5.0 s")
    assert "last crash: child 'a'" in message


# -- supervisor decisions, on trio's MockClock (no database, no sleeps) ----------------


@pytest.mark.trio
async def test_intensity_zero_gives_up_at_the_first_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor(three(journal), intensity=0), link=False)
        journal.clear()
        otpy.cast(await child_ref(sup, "b"), "crash")
        reason = await sup.wait()
    assert isinstance(reason.error, GaveUp)
    assert journal.starts() == []  # not one restart
    assert journal.stops() == ["b", "c", "a"]


@pytest.mark.trio
async def test_a_restart_exactly_one_period_old_no_longer_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(
            nursery, otpy.Supervisor(three(journal), intensity=1, period=10), link=False
        )
        await crash(sup, "a")  # t=0: one restart, the most allowed
        await trio.sleep(10)
        await crash(sup, "a")  # t=10: the first one is exactly 10 s old and drops out
        assert sup.alive
        await trio.sleep(9.5)
        otpy.cast(await child_ref(sup, "a"), "crash")  # t=19.5: two within 10 s
        reason = await sup.wait()
        assert isinstance(reason.error, GaveUp)
        assert trio.current_time() == pytest.approx(19.5)


@pytest.mark.trio
async def test_a_transient_child_stopped_with_a_shutdown_detail_is_not_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    spec = worker_spec("t", journal, restart=otpy.TRANSIENT)
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([spec], intensity=0))
        ref = await child_ref(sup, "t")
        reason = await otpy.stop(ref, otpy.ExitReason.shutdown("drained"))
        assert reason.normal
        await otpy.count_children(sup)
        assert (await running(sup)) == {"t": None}  # kept as a spec, not running
        assert sup.alive  # and no restart counted against intensity 0
        await otpy.stop(sup)


@pytest.mark.trio
async def test_a_transient_child_killed_from_outside_is_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    spec = worker_spec("t", journal, restart=otpy.TRANSIENT)
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([spec]))
        ref = await child_ref(sup, "t")
        ref.kill()
        assert await ref.wait() is otpy.KILLED  # killed is abnormal
        await otpy.count_children(sup)
        now = (await running(sup))["t"]
        assert now is not None and now is not ref and now.alive
        await otpy.stop(sup)


@pytest.mark.trio
async def test_a_temporary_child_crashing_is_forgotten_and_costs_no_intensity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    specs = [worker_spec("a", journal), worker_spec("temp", journal, restart=otpy.TEMPORARY)]
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor(specs, intensity=0))
        journal.clear()
        await crash(sup, "temp")
        assert sup.alive
        assert list(await running(sup)) == ["a"]
        assert journal.events == [("stop", "temp")]
        await otpy.stop(sup)


@pytest.mark.trio
async def test_a_temporary_child_exiting_under_one_for_all_restarts_nobody(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    specs = [
        worker_spec("a", journal),
        worker_spec("temp", journal, restart=otpy.TEMPORARY),
        worker_spec("c", journal),
    ]
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor(specs, strategy=otpy.ONE_FOR_ALL))
        before = await running(sup)
        journal.clear()
        await crash(sup, "temp")
        after = await running(sup)
        assert journal.events == [("stop", "temp")]
        assert after == {"a": before["a"], "c": before["c"]}
        await otpy.stop(sup)


@pytest.mark.trio
async def test_one_for_all_forgets_a_temporary_sibling_it_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    specs = [
        worker_spec("a", journal),
        worker_spec("temp", journal, restart=otpy.TEMPORARY),
        worker_spec("c", journal),
    ]
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor(specs, strategy=otpy.ONE_FOR_ALL))
        journal.clear()
        await crash(sup, "c")
        # c's own terminate, the others stopped in reverse order, then the
        # permanent ones start again in order; the temporary one is gone.
        assert journal.events == [
            ("stop", "c"),
            ("stop", "temp"),
            ("stop", "a"),
            ("start", "a"),
            ("start", "c"),
        ]
        assert list(await running(sup)) == ["a", "c"]
        await otpy.stop(sup)


@pytest.mark.trio
async def test_rest_for_one_crash_of_the_last_child_restarts_only_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor(three(journal), strategy=otpy.REST_FOR_ONE))
        before = await running(sup)
        journal.clear()
        await crash(sup, "c")
        after = await running(sup)
        assert journal.events == [("stop", "c"), ("start", "c")]
        assert after["a"] is before["a"] and after["b"] is before["b"]
        assert after["c"] is not before["c"]
        await otpy.stop(sup)


@pytest.mark.trio
async def test_restarts_spaced_by_backoff_wider_than_the_period_never_give_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Intensity counts restarts when they happen, not crashes: a child that
    # crashes at once after every start, restarted every 3 s, makes at most
    # two restarts in any 5 s window, so intensity 2 / period 5 holds forever.
    journal = Journal()
    spec = worker_spec("db", journal, backoff=otpy.Backoff(initial=3, maximum=3))
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.Supervisor([spec], intensity=2, period=5))
        restarted_at = []
        for _ in range(6):
            starts = len(journal.starts())
            otpy.cast(await child_ref(sup, "db"), "crash")
            await journal.wait_for(lambda: len(journal.starts()) > starts)  # noqa: B023
            restarted_at.append(trio.current_time())
        assert restarted_at == pytest.approx([3, 6, 9, 12, 15, 18])
        assert sup.alive
        await otpy.stop(sup)
