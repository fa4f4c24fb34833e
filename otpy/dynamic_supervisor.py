"""DynamicSupervisor: children started and stopped at run time (``simple_one_for_one``).

It starts with no children; :func:`start_child` adds one from any task and
returns its ref once the child's ``init`` finished (or raises the child's
:class:`~otpy.errors.InitError`, so e.g. a ``subscribe()`` can hand the error
to its caller).  Each child is restarted on its own (one_for_one) according to
its spec's restart type and backoff; the restart intensity applies to all
children together, as in Elixir's ``DynamicSupervisor``.

Why every start runs in a task of its own: a child's ``init`` may take long or
hang (a reader connecting to an unreachable host).  Run inside the
supervisor's message loop, it would stall every other request: the starts and
restarts of the other children, ``which_children``, ``terminate_child``.  So
the supervisor launches the start in a background task and answers the
caller later (a deferred reply, OTP's ``{noreply, State}``), at the moment the
child's ``init`` returned.  It does wait for the start up to
:data:`~otpy.supervisor.INLINE_START_WAIT` seconds before it turns to its next message: a
child whose ``init`` is quick (nearly all) is then running before the
supervisor answers anything else, exactly as with OTP's synchronous starts
(``which_children`` right after a crash sees the restarted child); only a
slow start goes on in the background while the others are served.  Postgrex
hit exactly this (a connect in ``init`` blocking a DynamicSupervisor,
elixir-ecto/postgrex#746).  A start still in
progress counts towards ``max_children``, shows in ``which_children`` with
``ref=None``, and is cancelled (never leaked) when the supervisor stops or
gives up; its caller then gets an :class:`~otpy.errors.InitError`.
"""

from __future__ import annotations

from typing import Any

from otpy._moved import moved_names
from otpy._util import check_int
from otpy.actor import Ref
from otpy.errors import MaxChildren
from otpy.gen_server import NO_REPLY
from otpy.process import From, reply_error
from otpy.supervisor import (
    Child,
    StartChild,
    SupervisorBase,
    count_children,
    start_child,
    terminate_child,
    which_children,
)

__all__ = ["DynamicSupervisor"]


class DynamicSupervisor(SupervisorBase):
    """Supervise a changing set of children, each added with :meth:`start_child`.

    ``max_children`` caps how many may run or be starting at once
    (:class:`~otpy.errors.MaxChildren` beyond it).  Children stop in reverse
    start order when the supervisor stops.  ``terminate_child`` takes the
    child's ref and forgets it.  Starts and restarts run concurrently, so a
    child whose ``init`` hangs delays nobody but its own caller; bound it with
    ``ChildSpec.start_timeout``.
    """

    which_children = staticmethod(which_children)
    count_children = staticmethod(count_children)
    start_child = staticmethod(start_child)
    terminate_child = staticmethod(terminate_child)

    def __init__(
        self, *, intensity: int = 3, period: float = 5.0, max_children: int | None = None
    ) -> None:
        super().__init__(intensity=intensity, period=period)
        self.max_children = (
            None if max_children is None else check_int("max_children", max_children)
        )
        self._children: dict[Child, None] = {}

    def __repr__(self) -> str:
        return f"<DynamicSupervisor {len(self._children)} children>"

    def _children_list(self) -> list[Child]:
        return list(self._children)

    def _contains(self, child: Child) -> bool:
        return child in self._children

    def _remove(self, child: Child) -> None:
        self._children.pop(child, None)

    def _forget_stopped(self, child: Child) -> None:
        """A dynamic supervisor forgets every child that stopped for good."""
        self._remove(child)

    def _child_started(self, child: Child, ref: Ref, event: str) -> None:
        # Starts finish in any order: keep the children in the order their
        # init finished, so they stop in reverse start order.
        if child in self._children:
            del self._children[child]
            self._children[child] = None
        super()._child_started(child, ref, event)

    async def _restart(self, child: Child) -> None:
        await self._launch(child, None, "child_restarted")

    async def handle_call(self, request: Any, from_: From) -> Any:
        """Starts are launched and answered later; other requests as any supervisor."""
        if type(request) is not StartChild:
            return await super().handle_call(request, from_)
        if self.max_children is not None and len(self._children) >= self.max_children:
            reply_error(
                from_,
                MaxChildren(
                    f"supervisor {self.label} already runs or starts {self.max_children} children"
                ),
            )
            return NO_REPLY
        child = Child(request.spec)
        self._children[child] = None
        await self._launch(child, from_, "child_started")
        return NO_REPLY


# Defined (and documented) in otpy.supervisor; this module re-exported it.
__getattr__ = moved_names(__name__, {"INLINE_START_WAIT": "otpy.supervisor:INLINE_START_WAIT"})
