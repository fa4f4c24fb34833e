"""Monitors, links and the name registry."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import otpy
from otpy.errors import ExitSignal, NameTaken, NoProcess, NotAnActor


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


async def test_registry_register_whereis_cleanup() -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Watcher())
        otpy.register(("slot", "s1"), ref)
        otpy.register("alias", ref)
        assert otpy.whereis(("slot", "s1")) is ref and ref.name == ("slot", "s1")
        other = await otpy.start(nursery, Watcher())
        with pytest.raises(NameTaken):
            otpy.register("alias", other)
        otpy.unregister("alias")
        otpy.register("alias", other)
        assert otpy.current_registry().registered() == {("slot", "s1"): ref, "alias": other}
        await otpy.stop(ref)
        # Names are released when the actor exits.
        assert otpy.whereis(("slot", "s1")) is None
        with pytest.raises(NoProcess):
            await otpy.call(("slot", "s1"), "x")
        with pytest.raises(NoProcess):
            otpy.register("late", ref)
        await otpy.stop(other)
        assert otpy.current_registry().registered() == {}


async def test_via_and_scoped_registries_do_not_collide() -> None:
    mine = otpy.Registry("mine")
    async with trio.open_nursery() as nursery:
        a = await otpy.start(nursery, Watcher(), name="svc")
        b = await otpy.start(nursery, Watcher(), name=otpy.Via(mine, "svc"))
        assert otpy.whereis("svc") is a
        assert otpy.whereis(otpy.Via(mine, "svc")) is b
        with otpy.use_registry(mine):
            assert otpy.whereis("svc") is b
            # Actors started inside the block inherit the registry.
            c = await otpy.start(nursery, Watcher(), name="inner")
        assert otpy.whereis("inner") is None
        assert mine.whereis("inner") is c
        for ref in (a, b, c):
            await otpy.stop(ref)
        assert mine.registered() == {}


class DictRegistry:
    """A minimal third-party registry: anything with register/unregister/whereis works."""

    def __init__(self) -> None:
        self.names: dict[Any, otpy.Ref] = {}

    def register(self, name: Any, ref: otpy.Ref) -> None:
        if name in self.names:
            raise NameTaken(name, self.names[name])
        self.names[name] = ref

    def unregister(self, name: Any) -> None:
        self.names.pop(name, None)

    def whereis(self, name: Any) -> otpy.Ref | None:
        return self.names.get(name)


async def test_via_custom_registry_is_released_on_exit() -> None:
    registry = DictRegistry()
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Watcher(), name=otpy.Via(registry, ("tenant", 1)))
        assert registry.names == {("tenant", 1): ref}
        assert await otpy.call(otpy.Via(registry, ("tenant", 1)), "anything") is None
        await otpy.stop(ref)
    assert registry.names == {}


class LiveOnlyRegistry(DictRegistry):
    """A registry that follows the protocol to the letter: whereis reports live actors only."""

    def whereis(self, name: Any) -> otpy.Ref | None:
        ref = self.names.get(name)
        return ref if ref is not None and ref.alive else None


async def test_exit_removes_the_binding_not_just_hides_it() -> None:
    custom = LiveOnlyRegistry()
    mine = otpy.Registry("mine")
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Watcher(), name=otpy.Via(custom, "a"))
        otpy.register(otpy.Via(mine, "b"), ref)
        assert repr(mine) == "<Registry mine (1 names)>"
        await otpy.stop(ref)
    assert custom.names == {}
    assert repr(mine) == "<Registry mine (0 names)>"
    assert ref.name == "a"  # a dead ref keeps its name for reports


def test_each_trio_run_has_its_own_default_registry() -> None:
    async def claim() -> otpy.Ref:
        async with trio.open_nursery() as nursery:
            ref = await otpy.start(nursery, Watcher(), name="global")
            assert otpy.whereis("global") is ref
            # Another independent run (e.g. another test) cannot see or clash with it.
            await otpy.stop(ref)
            return ref

    first = trio.run(claim)
    second = trio.run(claim)
    assert first is not second


def test_exit_reason_values() -> None:
    assert otpy.NORMAL.normal and otpy.SHUTDOWN.normal
    assert otpy.KILLED.abnormal
    crashed = otpy.ExitReason.crashed(ValueError("x"))
    assert crashed.abnormal and str(crashed) == "ValueError: x"
    assert otpy.ExitReason.shutdown() is otpy.SHUTDOWN
    assert str(otpy.ExitReason.shutdown({"why": 1})) == "shutdown: {'why': 1}"
