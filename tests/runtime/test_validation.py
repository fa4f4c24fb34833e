"""Bad values are refused where they enter the runtime; a bad child never crashes a supervisor."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from rt_helpers import Journal, worker_spec

import otpy
from otpy.errors import CallTimeout, InitError, InvalidArgument

NAN = math.nan


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda: otpy.Supervisor([], intensity=-1), "intensity"),
        (lambda: otpy.Supervisor([], intensity=1.5), "intensity"),
        (lambda: otpy.Supervisor([], intensity=True), "intensity"),
        (lambda: otpy.Supervisor([], period=NAN), "period"),
        (lambda: otpy.Supervisor([], period=0), "period"),
        (lambda: otpy.Supervisor([], period=math.inf), "period"),
        (lambda: otpy.Supervisor([], strategy="one_for_some"), "strategy"),
        (lambda: otpy.Supervisor(["not a spec"]), "children"),  # type: ignore[list-item]
        (lambda: otpy.DynamicSupervisor(max_children=-1), "max_children"),
        (lambda: otpy.DynamicSupervisor(max_children=2.0), "max_children"),  # type: ignore[arg-type]
        (lambda: otpy.DynamicSupervisor(period=NAN), "period"),
    ],
)
def test_supervisor_refuses_invalid_options_when_built(
    build: Callable[[], object], option: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        build()
    assert info.value.option == option


class Echo(otpy.GenServer):
    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        if request[0] == "send_after":
            try:
                self.send_after(request[1], "tick")
            except InvalidArgument as exc:
                return exc
        return request


async def test_timeouts_refuse_nan_before_doing_anything() -> None:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Echo())
        with pytest.raises(InvalidArgument, match="call timeout"):
            await otpy.call(ref, "x", timeout=NAN)
        with pytest.raises(InvalidArgument, match="call timeout"):
            await otpy.call(ref, "x", timeout="5")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="stop timeout"):
            await otpy.stop(ref, timeout=NAN)
        with pytest.raises(InvalidArgument, match="stop timeout"):
            await otpy.stop(ref, timeout=-1)
        assert ref.alive  # nothing was stopped
        error = await otpy.call(ref, ("send_after", NAN))
        assert isinstance(error, InvalidArgument) and error.option == "send_after delay"
        error = await otpy.call(ref, ("send_after", -1))
        assert isinstance(error, InvalidArgument)
        assert ref.alive  # the server did not crash on a bad timer
        with pytest.raises(InvalidArgument, match="start timeout"):
            await otpy.start(nursery, Echo(), timeout=NAN)
        with pytest.raises(InvalidArgument, match="link"):
            await otpy.start(nursery, Echo(), link="false")  # type: ignore[arg-type]
        assert await otpy.call(ref, ("ok",), timeout=1) == ("ok",)  # ints still accepted
        await otpy.stop(ref)


async def test_a_nan_call_cannot_fire_at_another_calls_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Silent(otpy.GenServer):
        async def handle_call(self, request: Any, from_: otpy.From) -> Any:
            return otpy.NO_REPLY

    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Silent())
        with pytest.raises(InvalidArgument):
            await otpy.call(ref, "nan", timeout=NAN)
        t0 = trio.current_time()
        with pytest.raises(CallTimeout):
            await otpy.call(ref, "three", timeout=3)
        assert trio.current_time() - t0 == pytest.approx(3)
        await otpy.stop(ref)


class NotAServer:
    pass


def raises_type_error() -> otpy.GenServer:
    raise TypeError("bad arguments for the server")


@pytest.mark.parametrize(
    "start",
    [lambda: None, NotAServer, raises_type_error, lambda: 42],
    ids=["returns-none", "returns-non-actor", "raises-type-error", "returns-int"],
)
@pytest.mark.parametrize("kind", ["static", "dynamic"])
async def test_a_bad_child_fails_its_start_and_leaves_siblings_running(
    start: Callable[[], Any], kind: str
) -> None:
    journal = Journal()
    async with trio.open_nursery() as nursery:
        sup_server: otpy.GenServer = (
            otpy.Supervisor([worker_spec("a", journal)])
            if kind == "static"
            else otpy.DynamicSupervisor()
        )
        sup = await otpy.start(nursery, sup_server)
        if kind == "dynamic":
            await otpy.start_child(sup, worker_spec("a", journal))
        (sibling,) = [i.ref for i in await otpy.which_children(sup)]
        with pytest.raises(InitError):
            await otpy.start_child(sup, otpy.ChildSpec(id="bad", start=start))
        assert sup.alive
        assert [i.ref for i in await otpy.which_children(sup)] == [sibling]
        assert sibling is not None and sibling.alive
        await otpy.stop(sup)


@pytest.mark.parametrize("kind", ["static", "dynamic"])
async def test_start_child_refuses_what_is_not_a_child_spec(kind: str) -> None:
    async with trio.open_nursery() as nursery:
        sup_server = otpy.Supervisor([]) if kind == "static" else otpy.DynamicSupervisor()
        sup = await otpy.start(nursery, sup_server)
        with pytest.raises(InvalidArgument, match="spec"):
            await otpy.start_child(sup, {"id": "w", "start": Echo})  # type: ignore[arg-type]
        assert sup.alive
        await otpy.stop(sup)
