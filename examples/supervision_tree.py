"""A supervision tree without PostgreSQL: ``rest_for_one``, a counter and a worker that crashes.

The tree, as an Erlang programmer would draw it::

    root (Supervisor, rest_for_one, intensity 3 per 5 s)
    ├── counter   Counter: counts the items processed
    └── worker    Worker: processes items, crashes on "poison"

``rest_for_one`` is the strategy for "later children depend on earlier ones":
the worker holds the ``Ref`` of the counter it found when it started (as an
Erlang process holds a pid), so when the counter restarts that ref is dead and
the worker must restart too; when only the worker crashes, the counter (and
its count) is left alone.  Too many crashes in too little time and the
supervisor gives up, crashing with ``GaveUp`` so that *its* supervisor can
react (escalation): here it has none, so we just watch it exit.

Run: ``otpy run supervision_tree:app`` from ``examples/``, or
``python examples/supervision_tree.py`` (no database needed).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import attrs
import trio

import otpy
from otpy.errors import ActorExited

import _demo

logger = logging.getLogger(__name__)

POISON = "poison"


class Counter(otpy.GenServer):
    """Counts processed items.  Its state starts from zero on every (re)start."""

    def __init__(self) -> None:
        self.value = 0

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case "get":
                return self.value
            case ("add", n):
                self.value += n
                return self.value
        return await super().handle_call(request, from_)  # unexpected: crash, like Erlang

    async def handle_cast(self, request: Any) -> None:
        match request:
            case "crash":
                raise RuntimeError("counter crashed on request")
        await super().handle_cast(request)


class Worker(otpy.GenServer):
    """Processes items and reports each one to the counter it found at start-up."""

    async def init(self) -> None:
        counter = otpy.whereis("counter")
        if counter is None:  # cannot happen under rest_for_one: the counter starts first
            raise RuntimeError("no counter to report to")
        self.counter = counter  # this incarnation's ref: dead once the counter restarts

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case ("process", item) if item == POISON:
                raise ValueError(f"cannot process {item!r}")  # let it crash
            case ("process", _item):
                return await otpy.call(self.counter, ("add", 1))
        return await super().handle_call(request, from_)


def root_supervisor() -> otpy.Supervisor:
    """The tree: children start in this order and stop in the reverse one."""
    return otpy.Supervisor(
        [
            Counter.child_spec(name="counter"),
            Worker.child_spec(name="worker"),
        ],
        strategy=otpy.REST_FOR_ONE,
        intensity=3,  # more than 3 restarts ...
        period=5.0,  # ... within 5 seconds: give up
    )


@attrs.frozen
class Step:
    """What one step of :func:`main` did to the tree."""

    what: str
    count: int | None
    """The counter's value afterwards (None once the tree is gone)."""
    restarted: frozenset[str]
    """Children whose ref changed during the step, i.e. that were restarted."""


async def _refs(sup: otpy.Ref) -> dict[str, otpy.Ref | None]:
    return {str(child.id): child.ref for child in await otpy.which_children(sup)}


async def _crash_worker(sup: otpy.Ref) -> None:
    with contextlib.suppress(ActorExited):
        await otpy.call("worker", ("process", POISON))
    # The worker's exit reached the supervisor before it reached us, so by the
    # time the supervisor answers this call it has handled the crash (restarted
    # the worker, or given up): a way to wait for the restart without sleeping.
    await otpy.count_children(sup)


async def main() -> tuple[list[Step], otpy.ExitReason]:
    """Run the tree through crashes; return what each step did and how the tree ended."""
    steps: list[Step] = []

    async def record(what: str, sup: otpy.Ref, before: dict[str, otpy.Ref | None]) -> None:
        after = await _refs(sup)
        restarted = frozenset(cid for cid in after if after[cid] is not before[cid])
        steps.append(Step(what, await otpy.call("counter", "get"), restarted))
        logger.info("%-28s counter=%s restarted=%s", what, steps[-1].count, sorted(restarted))

    async with trio.open_nursery() as nursery:
        # link=False: the supervisor's crash (when it gives up) becomes its exit
        # reason, which we inspect below, instead of an exception in this nursery.
        sup = await otpy.start(nursery, root_supervisor(), name="root", link=False)

        before = await _refs(sup)
        for item in ("a", "b", "c"):
            await otpy.call("worker", ("process", item))
        await record("processed 3 items", sup, before)

        before = await _refs(sup)
        await _crash_worker(sup)
        await record("worker crashed", sup, before)  # the count survives

        before = await _refs(sup)
        await otpy.call("worker", ("process", "d"))
        await record("processed 1 item", sup, before)

        before = await _refs(sup)
        counter = before["counter"]
        assert counter is not None
        otpy.cast(counter, "crash")
        await counter.wait()  # a plain task has no mailbox for a Down: wait on the ref
        await otpy.count_children(sup)  # and until the supervisor handled the crash
        await record("counter crashed", sup, before)  # both restarted, count from 0

        # Two restarts so far; crash the worker until the intensity is exceeded.
        crashes = 0
        with contextlib.suppress(ActorExited):
            while True:
                await _crash_worker(sup)
                crashes += 1
        reason = await sup.wait()  # the supervisor's exit reason: GaveUp
        steps.append(Step(f"gave up after {crashes + 1} more crashes", None, frozenset()))
        logger.info("root supervisor exited: %s", reason)
    return steps, reason


#: ``otpy run supervision_tree:app`` (from examples/, no configuration needed):
#: the tree above, started, crashed and given up by :func:`main`, once.
app = _demo.application("supervision_tree", lambda env: main())


class _OneLineErrors(logging.Formatter):
    """Crash reports without tracebacks: the exception's repr is already in the message."""

    def formatException(self, ei: Any) -> str:
        return ""


if __name__ == "__main__":
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLineErrors("%(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    trio.run(main)
