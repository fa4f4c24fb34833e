"""The runtime at scale: what an idle actor holds, and supervisors that stay O(N).

Costs are counted, not timed (the machine is shared): allocated bytes with
tracemalloc, GC-tracked objects, and ``__eq__`` calls on child ids.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from typing import Any

import trio

import otpy


class Idle(otpy.GenServer):
    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return "ok"


class Request:
    """A request that can be weakly referenced, to see who keeps it alive."""


async def test_an_idle_server_does_not_keep_its_last_request_alive() -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Idle())
        request = Request()
        alive = weakref.ref(request)
        assert await otpy.call(ref, request) == "ok"
        del request
        gc.collect()
        assert alive() is None, "the idle server still holds its last request"
        await otpy.stop(ref)


async def test_a_thousand_idle_servers_hold_under_5_kb_and_30_tracked_objects_each() -> None:
    n = 1000
    refs: list[otpy.Ref] = []
    async with trio.open_nursery() as nursery:
        await otpy.call(await otpy.start(nursery, Idle()), None)  # warm up lazy globals
        gc.collect()
        objects_before = len(gc.get_objects())
        tracemalloc.start()
        try:
            for _ in range(n):
                refs.append(await otpy.start(nursery, Idle()))
            for ref in refs:
                assert await otpy.call(ref, None) == "ok"
            gc.collect()
            per_actor = tracemalloc.get_traced_memory()[0] / n
        finally:
            tracemalloc.stop()
        tracked = (len(gc.get_objects()) - objects_before) / n
        # Measured: about 3.9 KB and 24 objects (a bare trio task with a memory
        # channel of its own: 4.5 KB and 22); before lazy containers 7.5 KB and 44.
        assert per_actor < 5000, f"{per_actor:.0f} bytes per idle actor"
        assert tracked < 30, f"{tracked:.1f} GC-tracked objects per idle actor"
        nursery.cancel_scope.cancel()


class CountingId:
    """A child id that counts how often it is compared with another id."""

    comparisons = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        CountingId.comparisons += 1
        return isinstance(other, CountingId) and other.n == self.n

    def __repr__(self) -> str:
        return f"CountingId({self.n})"


class Fragile(otpy.GenServer):
    inits = 0
    target = 0
    reached: trio.Event | None = None

    async def init(self) -> None:
        Fragile.inits += 1
        if Fragile.inits == Fragile.target and Fragile.reached is not None:
            Fragile.reached.set()

    async def handle_cast(self, request: Any) -> None:
        raise RuntimeError("crash on request")


async def test_a_supervisor_of_many_children_never_compares_every_child_id() -> None:
    """Building, restarting all children and finding one by id cost O(N), not O(N²)."""
    n = 300
    ids = [CountingId(i) for i in range(n)]
    specs = [otpy.ChildSpec(id=cid, start=Fragile) for cid in ids]
    CountingId.comparisons = 0
    Fragile.inits, Fragile.target, Fragile.reached = 0, 2 * n, trio.Event()
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(
            nursery, otpy.Supervisor(specs, intensity=2 * n, period=3600), link=False
        )
        children = await otpy.which_children(sup)
        assert [info.id for info in children] == ids
        for info in children:
            assert info.ref is not None
            otpy.cast(info.ref, "crash")
        with trio.fail_after(10):
            await Fragile.reached.wait()  # every child crashed and was restarted
        assert (await otpy.count_children(sup)).active == n
        await otpy.terminate_child(sup, ids[-1])
        await otpy.restart_child(sup, ids[-1])
        await otpy.stop(sup)
    # A list scan would compare ~n²/2 = 45,000 times; a dict compares (at most)
    # the one id it finds.
    assert CountingId.comparisons <= 10, CountingId.comparisons
