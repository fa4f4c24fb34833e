"""Name registry: register actors under names, look them up, forget them on exit.

Names are scoped.  Each trio run has its own default registry (a
``trio.lowlevel.RunVar``), so two tests or two ``trio.run`` calls in one process
never see each other's names; an application (or any block of code) can use a
registry of its own with :func:`use_registry` or by passing one to
``otpy.start_application``.  :class:`Via` names an actor in an explicit
registry, like Elixir's ``{:via, Registry, {reg, key}}``, and works wherever a
ref does.

A name is any hashable value other than a :class:`~otpy.Ref` or :class:`Via`
(strings and tuples such as ``("repl_slot", "s1")`` are typical).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Hashable, Iterator
from typing import Any, TypeAlias

import attrs
import trio

from otpy.actor import NameRegistry, Ref
from otpy.errors import NameTaken, NoProcess

__all__ = [
    "Registry",
    "Target",
    "Via",
    "current_registry",
    "register",
    "resolve",
    "unregister",
    "use_registry",
    "whereis",
]


class Registry:
    """A set of name → actor bindings; an actor's names are released when it exits.

    Only live actors can be registered, and a name bound to a live actor cannot
    be taken (:class:`~otpy.errors.NameTaken` carries the holder's ref, like
    ``{already_started, Pid}``).
    """

    def __init__(self, label: str = "registry") -> None:
        self.label = label
        self._names: dict[Hashable, Ref] = {}

    def __repr__(self) -> str:
        return f"<Registry {self.label} ({len(self._names)} names)>"

    def register(self, name: Any, ref: Ref) -> None:
        """Bind ``name`` to ``ref`` until ``ref`` exits or the name is unregistered."""
        if isinstance(name, Ref | Via):
            raise TypeError(f"a name must be a plain hashable value, not {name!r}")
        held = self._names.get(name)
        if held is not None and held.alive:
            raise NameTaken(name, held)
        if not ref.alive:
            raise NoProcess(name)
        self._names[name] = ref
        ref.add_name(self, name)

    def unregister(self, name: Any) -> None:
        """Remove ``name``; the actor keeps running.  No error if it is not bound."""
        ref = self._names.pop(name, None)
        if ref is not None:
            ref.drop_name(self, name)

    def whereis(self, name: Any) -> Ref | None:
        """The live actor registered as ``name``, or None."""
        ref = self._names.get(name)
        return ref if ref is not None and ref.alive else None

    def registered(self) -> dict[Hashable, Ref]:
        """A snapshot of all current bindings."""
        return {n: r for n, r in self._names.items() if r.alive}


@attrs.frozen
class Via:
    """A name in an explicit registry: ``Via(registry, key)``.

    Usable wherever a ref is (``call``, ``cast``, ``start(name=...)``, child
    specs), so a library can keep its names in a registry of its own.
    """

    registry: NameRegistry
    name: Hashable


Target: TypeAlias = Ref | Via | str | tuple[Any, ...]
"""Anything that addresses an actor: a ref, a name in the current registry, or a Via."""

_DEFAULT: trio.lowlevel.RunVar[Registry] = trio.lowlevel.RunVar("otpy_registry")
_OVERRIDE: contextvars.ContextVar[Registry | None] = contextvars.ContextVar(
    "otpy_registry_override", default=None
)


def current_registry() -> Registry:
    """The registry plain names resolve in: the innermost :func:`use_registry`, else the run's."""
    reg = _OVERRIDE.get()
    if reg is not None:
        return reg
    try:
        return _DEFAULT.get()
    except LookupError:
        reg = Registry("default")
        _DEFAULT.set(reg)
        return reg


@contextlib.contextmanager
def use_registry(registry: Registry) -> Iterator[Registry]:
    """Resolve plain names in ``registry`` inside this block.

    Tasks and actors started inside the block inherit it (trio copies the
    context on spawn), so a whole application can live in its own namespace.
    """
    token = _OVERRIDE.set(registry)
    try:
        yield registry
    finally:
        _OVERRIDE.reset(token)


def _split(name: Any) -> tuple[NameRegistry, Hashable]:
    if isinstance(name, Via):
        return name.registry, name.name
    return current_registry(), name


def register(name: Any, ref: Ref) -> None:
    """Register ``ref`` as ``name`` (a plain name or a :class:`Via`).

    The name is released when ``ref`` exits, whatever kind of registry holds it.
    """
    registry, key = _split(name)
    registry.register(key, ref)
    if not isinstance(registry, Registry):
        ref.add_name(registry, key)


def unregister(name: Any) -> None:
    """Remove the binding of ``name`` (a plain name or a :class:`Via`)."""
    registry, key = _split(name)
    registry.unregister(key)


def whereis(name: Any) -> Ref | None:
    """The live actor registered as ``name``, or None (also accepts a ref: itself if alive)."""
    if isinstance(name, Ref):
        return name if name.alive else None
    registry, key = _split(name)
    return registry.whereis(key)


def resolve(target: Any) -> Ref:
    """Turn a target into a ref; raise :class:`~otpy.errors.NoProcess` for an unbound name.

    A ref is returned as is, alive or not, so that using it reports the real
    exit reason rather than ``noproc``.
    """
    if type(target) is Ref:
        return target
    ref = whereis(target)
    if ref is None:
        raise NoProcess(target)
    return ref
