"""The name registry (otpy.registry): names, Via, scoped registries, release on exit."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from rt_helpers import Watcher

import otpy
from otpy.errors import NameTaken, NoProcess


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


class LiveOnlyRegistry(DictRegistry):
    """A registry that follows the protocol to the letter: whereis reports live actors only."""

    def whereis(self, name: Any) -> otpy.Ref | None:
        ref = self.names.get(name)
        return ref if ref is not None and ref.alive else None


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


async def test_via_custom_registry_is_released_on_exit() -> None:
    registry = DictRegistry()
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Watcher(), name=otpy.Via(registry, ("tenant", 1)))
        assert registry.names == {("tenant", 1): ref}
        assert await otpy.call(otpy.Via(registry, ("tenant", 1)), "anything") is None
        await otpy.stop(ref)
    assert registry.names == {}


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
