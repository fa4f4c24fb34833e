"""DynamicSupervisor: children added and removed at run time."""

from __future__ import annotations

import pytest
import trio
from rt_helpers import Journal, worker_spec

import otpy
from otpy.errors import ChildNotFound, GaveUp, InitError, MaxChildren


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
