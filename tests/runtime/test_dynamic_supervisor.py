"""DynamicSupervisor: children added and removed at run time."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from rt_helpers import HangOnRestart, Journal, worker_spec

import otpy
from otpy.errors import ChildNotFound, GaveUp, InitError, MaxChildren, StartTimeout


async def test_start_children_at_run_time_from_plain_tasks() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        await otpy.start(nursery, otpy.DynamicSupervisor(), name="dyn")
        refs: dict[int, otpy.Ref] = {}

        async def starter(i: int) -> None:
            refs[i] = await otpy.DynamicSupervisor.start_child(
                "dyn", worker_spec(i, journal, restart="temporary")
            )

        async with trio.open_nursery() as starters:
            for i in range(5):
                starters.start_soon(starter, i)
        # Each start_child returned a started (initialised) child.
        assert sorted(journal.starts()) == list(range(5))
        for i, ref in refs.items():
            assert await otpy.call(ref, "ping") == ("pong", i)
        counts = await otpy.count_children("dyn")
        assert counts == otpy.ChildCounts(specs=5, active=5, supervisors=0, workers=5)
        order = [info.ref for info in await otpy.which_children("dyn")]
        await otpy.stop("dyn")
    # Stopped in reverse start order.
    started_order = [refs[cid] for cid in journal.starts()]
    assert order == started_order
    assert journal.stops() == list(reversed(journal.starts()))


async def test_init_error_is_returned_to_the_caller() -> None:
    journal = Journal()
    journal.init_failures["bad"] = 1
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.DynamicSupervisor())
        with pytest.raises(InitError) as info:
            await otpy.start_child(sup, worker_spec("bad", journal))
        assert "refuses to start" in str(info.value.__cause__)
        assert (await otpy.count_children(sup)).specs == 0
        assert sup.alive
        await otpy.stop(sup)


async def test_terminate_child_by_ref_and_max_children() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.DynamicSupervisor(max_children=2))
        a = await otpy.start_child(sup, worker_spec("a", journal))
        await otpy.start_child(sup, worker_spec("b", journal))
        with pytest.raises(MaxChildren):
            await otpy.start_child(sup, worker_spec("c", journal))
        await otpy.DynamicSupervisor.terminate_child(sup, a)
        assert a.exit_reason is otpy.SHUTDOWN
        assert [i.id for i in await otpy.which_children(sup)] == ["b"]
        with pytest.raises(ChildNotFound):
            await otpy.terminate_child(sup, a)
        await otpy.start_child(sup, worker_spec("c", journal))
        await otpy.stop(sup)


async def test_restart_types_of_dynamic_children() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.DynamicSupervisor(intensity=10))
        perm = await otpy.start_child(sup, worker_spec("perm", journal))
        temp = await otpy.start_child(sup, worker_spec("temp", journal, restart="temporary"))
        trans = await otpy.start_child(sup, worker_spec("trans", journal, restart="transient"))
        for ref in (perm, temp, trans):
            otpy.cast(ref, "crash")
            await ref.wait()
        infos = {i.id: i.ref for i in await otpy.which_children(sup)}
        assert set(infos) == {"perm", "trans"}
        assert infos["perm"] not in (None, perm) and infos["trans"] not in (None, trans)
        new_trans = infos["trans"]
        assert new_trans is not None
        otpy.cast(new_trans, "exit")  # a normal exit: transient is not restarted, and forgotten
        await new_trans.wait()
        assert [i.id for i in await otpy.which_children(sup)] == ["perm"]
        await otpy.stop(sup)


async def test_intensity_applies_to_dynamic_children() -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.DynamicSupervisor(intensity=1), link=False)
        first = await otpy.start_child(sup, worker_spec("x", journal))
        other = await otpy.start_child(sup, worker_spec("y", journal))
        otpy.cast(first, "crash")
        await first.wait()
        (second,) = [i.ref for i in await otpy.which_children(sup) if i.id == "x"]
        assert second is not None
        otpy.cast(second, "crash")
        reason = await sup.wait()
        assert isinstance(reason.error, GaveUp)
        assert other.exit_reason is otpy.SHUTDOWN


class Hanger(otpy.GenServer):
    """A child whose ``init`` waits on a gate: the start that never finishes."""

    def __init__(self, gate: trio.Event, seen: list[otpy.Ref], in_init: trio.Event) -> None:
        self.gate = gate
        self.seen = seen
        self.in_init = in_init

    async def init(self) -> None:
        self.seen.append(self.ref)
        self.in_init.set()
        await self.gate.wait()


def hanger_spec(
    gate: trio.Event, seen: list[otpy.Ref], in_init: trio.Event, **kwargs: Any
) -> otpy.ChildSpec:
    return otpy.ChildSpec(id="hang", start=lambda: Hanger(gate, seen, in_init), **kwargs)


async def test_a_hanging_child_start_does_not_block_its_supervisor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    gate, in_init = trio.Event(), trio.Event()
    seen: list[otpy.Ref] = []
    result: list[otpy.Ref] = []
    replied = trio.Event()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.DynamicSupervisor(intensity=10))

        async def start_hanger() -> None:
            result.append(await otpy.start_child(sup, hanger_spec(gate, seen, in_init)))
            replied.set()

        nursery.start_soon(start_hanger)
        await in_init.wait()
        with trio.fail_after(1):  # the supervisor answers while the start hangs
            assert [(i.id, i.ref) for i in await otpy.which_children(sup)] == [("hang", None)]
            counts = await otpy.count_children(sup)
            assert counts == otpy.ChildCounts(specs=1, active=0, supervisors=0, workers=1)
            a = await otpy.start_child(sup, worker_spec("a", journal))
            b = await otpy.start_child(sup, worker_spec("b", journal))
            otpy.cast(a, "crash")
            await a.wait()
            restarted = {i.id: i.ref for i in await otpy.which_children(sup)}["a"]
            assert restarted not in (None, a)  # another child's restart went through
            await otpy.terminate_child(sup, b)
            assert b.exit_reason is otpy.SHUTDOWN
        assert not result  # the caller still waits for its child
        gate.set()
        await replied.wait()
        (hang,) = seen
        assert result == [hang] and hang.alive
        assert {i.id: i.ref for i in await otpy.which_children(sup)}["hang"] is hang
        await otpy.stop(sup)


async def test_stopping_the_supervisor_cancels_a_start_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    gate, in_init = trio.Event(), trio.Event()
    seen: list[otpy.Ref] = []
    errors: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.DynamicSupervisor())
        await otpy.start_child(sup, worker_spec("a", journal))

        async def start_hanger() -> None:
            try:
                await otpy.start_child(sup, hanger_spec(gate, seen, in_init))
            except InitError as exc:
                errors.append(exc)

        nursery.start_soon(start_hanger)
        await in_init.wait()
        with trio.fail_after(1):
            assert await otpy.stop(sup) is otpy.NORMAL
    (hang,) = seen
    assert not hang.alive and hang.exit_reason is otpy.KILLED  # cancelled, not leaked
    assert len(errors) == 1 and errors[0].reason is otpy.SHUTDOWN
    assert journal.stops() == ["a"]  # the running child still ran its terminate


async def test_max_children_counts_starts_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    gate, in_init = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.DynamicSupervisor(max_children=1))
        nursery.start_soon(otpy.start_child, sup, hanger_spec(gate, [], in_init))
        await in_init.wait()
        with trio.fail_after(1), pytest.raises(MaxChildren):
            await otpy.start_child(sup, worker_spec("a", journal))
        gate.set()
        await otpy.stop(sup)


async def test_start_timeout_cancels_a_hanging_init_and_fails_the_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate, in_init = trio.Event(), trio.Event()
    seen: list[otpy.Ref] = []
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.DynamicSupervisor())
        t0 = trio.current_time()
        with pytest.raises(StartTimeout) as info:
            await otpy.start_child(sup, hanger_spec(gate, seen, in_init, start_timeout=5))
        assert trio.current_time() - t0 == pytest.approx(5)
        assert isinstance(info.value, TimeoutError) and info.value.timeout == 5
        (hang,) = seen
        assert hang.exit_reason is otpy.KILLED
        assert (await otpy.count_children(sup)).specs == 0
        await otpy.stop(sup)


async def test_a_hanging_restart_does_not_block_and_its_timeout_counts_towards_intensity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    gate = trio.Event()
    runs: list[int] = []
    spec = otpy.ChildSpec(
        id="flaky", start=lambda: HangOnRestart("flaky", journal, gate, runs), start_timeout=10
    )
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(nursery, otpy.DynamicSupervisor(intensity=3, period=100), link=False)
        other = await otpy.start_child(sup, worker_spec("other", journal))
        flaky = await otpy.start_child(sup, spec)
        otpy.cast(flaky, "crash")
        await flaky.wait()
        with trio.fail_after(1):  # the restart hangs; the supervisor still serves
            infos = {i.id: i.ref for i in await otpy.which_children(sup)}
            assert infos == {"other": other, "flaky": None}
            assert await otpy.start_child(sup, worker_spec("third", journal, restart="temporary"))
        # Each restart times out after 10 s, is retried and counted: the supervisor gives up.
        reason = await sup.wait()
        assert isinstance(reason.error, GaveUp)
        assert len(runs) == 1 + 3  # the start, then three restarts (intensity 3)
        assert other.exit_reason is otpy.SHUTDOWN


async def test_standalone_start_with_a_timeout(autojump_clock: trio.testing.MockClock) -> None:
    gate, in_init = trio.Event(), trio.Event()
    seen: list[otpy.Ref] = []
    async with trio.open_nursery() as nursery:
        with pytest.raises(StartTimeout):
            await otpy.start(nursery, Hanger(gate, seen, in_init), timeout=2)
        assert seen[0].exit_reason is otpy.KILLED


def test_inline_start_wait_has_one_home_and_the_old_path_warns() -> None:
    import otpy.dynamic_supervisor
    import otpy.supervisor

    with pytest.warns(DeprecationWarning, match=r"moved to otpy\.supervisor\.INLINE_START_WAIT"):
        old = otpy.dynamic_supervisor.INLINE_START_WAIT  # type: ignore[attr-defined]
    assert old == otpy.supervisor.INLINE_START_WAIT
