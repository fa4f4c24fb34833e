"""Actors (otpy.actor): exit reasons, the ref's runner API, and the moved primitives."""

from __future__ import annotations

import pytest
import trio

import otpy
from otpy.actor import NO_MESSAGE
from otpy.errors import ExitSignal


def test_exit_reason_values() -> None:
    assert otpy.NORMAL.normal and otpy.SHUTDOWN.normal
    assert otpy.KILLED.abnormal
    crashed = otpy.ExitReason.crashed(ValueError("x"))
    assert crashed.abnormal and str(crashed) == "ValueError: x"
    assert otpy.ExitReason.shutdown() is otpy.SHUTDOWN
    assert str(otpy.ExitReason.shutdown({"why": 1})) == "shutdown: {'why': 1}"


async def test_take_returns_queued_messages_then_parks_the_caller_with_no_message() -> None:
    ref = otpy.Ref("mailbox")
    ref.deliver("first")
    ref.deliver("second")
    assert ref.take() == "first"
    assert ref.take() == "second"
    assert ref.take() is NO_MESSAGE  # the calling task is now the parked receiver

    async def deliver_later() -> None:
        ref.deliver("third")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deliver_later)
        assert await trio.lowlevel.wait_task_rescheduled(ref.abort_wait) == "third"


async def test_a_stop_request_wakes_a_parked_receiver_with_no_message() -> None:
    ref = otpy.Ref("parked")
    assert ref.take() is NO_MESSAGE

    async def stop_later() -> None:
        ref.request_stop()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_later)
        assert await trio.lowlevel.wait_task_rescheduled(ref.abort_wait) is NO_MESSAGE
    assert ref.stop_reason is otpy.SHUTDOWN


async def test_a_cancelled_receive_leaves_no_parked_receiver_behind() -> None:
    ref = otpy.Ref("cancelled")
    with trio.move_on_after(0):
        await ref.receive()
    ref.deliver("kept")  # queued, not handed to a task that has gone
    assert ref.take() == "kept"


async def test_record_exit_tells_watchers_linked_actors_and_waiters_once() -> None:
    target, watcher, trapper = otpy.Ref("target"), otpy.Ref("watcher"), otpy.Ref("trapper")
    trapper.trap_exits = True
    mon = watcher.watch(target)
    trapper.link_to(target)
    reason = otpy.ExitReason.crashed(ValueError("boom"))
    target.record_exit(reason)
    target.record_exit(otpy.NORMAL)  # only the first exit counts
    assert target.exit_reason is reason and not target.alive and not mon.active
    assert watcher.take() == otpy.Down(mon, target, reason)
    assert trapper.take() == otpy.Exit(target, reason)
    assert await target.wait() is reason


def test_a_linked_actor_that_does_not_trap_exits_is_killed_with_an_exit_signal() -> None:
    a, b = otpy.Ref("a"), otpy.Ref("b")
    a.link_to(b)
    a.record_exit(otpy.ExitReason.crashed(ValueError("boom")))
    assert b.kill_reason is not None and isinstance(b.kill_reason.error, ExitSignal)
    # A normal exit does not propagate.
    c, d = otpy.Ref("c"), otpy.Ref("d")
    c.link_to(d)
    c.unlink_from(d)
    d.link_to(c)
    c.record_exit(otpy.NORMAL)
    assert d.kill_reason is None


async def test_monitor_cancel_is_false_once_the_down_was_sent() -> None:
    target, watcher = otpy.Ref("target"), otpy.Ref("watcher")
    first, second = watcher.watch(target), watcher.watch(target)
    assert first.cancel() is True and first.cancel() is False
    target.record_exit(otpy.NORMAL)
    assert second.cancel() is False
    assert watcher.take() == otpy.Down(second, target, otpy.NORMAL)  # one Down, the live one
    assert watcher.take() is NO_MESSAGE


def test_the_old_actor_primitives_warn_and_keep_their_watcher_first_order() -> None:
    import otpy.actor

    target, watcher = otpy.Ref("target"), otpy.Ref("watcher")
    with pytest.warns(
        DeprecationWarning, match=r"otpy\.actor\.monitor moved to otpy\.process"
    ) as w:
        mon = otpy.actor.monitor(watcher, target)  # type: ignore[attr-defined]
    assert w[0].filename == __file__  # the warning names the user's line
    assert mon.watcher is watcher and mon.target is target
    with pytest.warns(DeprecationWarning, match=r"otpy\.actor\.demonitor moved"):
        assert otpy.actor.demonitor(mon) is True  # type: ignore[attr-defined]
    with pytest.warns(DeprecationWarning, match=r"otpy\.actor\.link moved"):
        otpy.actor.link(watcher, target)  # type: ignore[attr-defined]
    with pytest.warns(DeprecationWarning, match=r"otpy\.actor\.unlink moved"):
        otpy.actor.unlink(watcher, target)  # type: ignore[attr-defined]
    target.record_exit(otpy.ExitReason.crashed(ValueError("boom")))
    assert watcher.kill_reason is None  # unlinked again
    with pytest.raises(AttributeError):
        otpy.actor.no_such_name  # type: ignore[attr-defined]  # noqa: B018
