"""DynamicSupervisor: children started and stopped at run time (``simple_one_for_one``).

It starts with no children; :func:`start_child` adds one from any task and
returns its ref once the child's ``init`` finished (or raises the child's
:class:`~otpy.errors.InitError`, so e.g. a ``subscribe()`` can hand the error
to its caller).  Each child is restarted on its own (one_for_one) according to
its spec's restart type and backoff; the restart intensity applies to all
children together, as in Elixir's ``DynamicSupervisor``.
"""

from __future__ import annotations

from typing import Any

from otpy.errors import MaxChildren
from otpy.supervisor import (
    SupervisorBase,
    _Child,
    _StartChild,
    count_children,
    start_child,
    terminate_child,
    which_children,
)

__all__ = ["DynamicSupervisor"]


class DynamicSupervisor(SupervisorBase):
    """Supervise a changing set of children, each added with :meth:`start_child`.

    ``max_children`` caps how many may run at once
    (:class:`~otpy.errors.MaxChildren` beyond it).  Children stop in reverse
    start order when the supervisor stops.  ``terminate_child`` takes the
    child's ref and forgets it.
    """

    which_children = staticmethod(which_children)
    count_children = staticmethod(count_children)
    start_child = staticmethod(start_child)
    terminate_child = staticmethod(terminate_child)

    def __init__(
        self, *, intensity: int = 3, period: float = 5.0, max_children: int | None = None
    ) -> None:
        super().__init__(intensity=intensity, period=period)
        self.max_children = max_children
        self._children: dict[_Child, None] = {}

    def __repr__(self) -> str:
        return f"<DynamicSupervisor {len(self._children)} children>"

    def _children_list(self) -> list[_Child]:
        return list(self._children)

    def _contains(self, child: _Child) -> bool:
        return child in self._children

    def _remove(self, child: _Child) -> None:
        self._children.pop(child, None)

    def _forget_stopped(self, child: _Child) -> None:
        """A dynamic supervisor forgets every child that stopped for good."""
        self._remove(child)

    async def _restart(self, child: _Child) -> None:
        await self._start_group([child])

    async def _handle_other(self, request: Any) -> Any:
        if type(request) is _StartChild:
            if self.max_children is not None and len(self._children) >= self.max_children:
                raise MaxChildren(
                    f"supervisor {self.label} already runs {self.max_children} children"
                )
            child = _Child(request.spec)
            self._children[child] = None
            try:
                return await self._start_child(child)
            except BaseException:
                self._remove(child)
                raise
        return await super()._handle_other(request)
