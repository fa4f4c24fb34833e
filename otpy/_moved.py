"""Old import paths kept working for one release, loudly: the one mechanism for moved names.

When a module or a name moves (``otpy.testing`` became ``otpy.pg.testing``, the
reader's I/O left the pure ``otpy.pg.replication`` package), code written
against the old path must keep running, and its authors must hear about it.
Two helpers do both, and nothing else in otpy writes ``DeprecationWarning``:

* :func:`alias_module` makes an old module *the same object* as its new home
  (``sys.modules`` entry), after one warning at import, so ``isinstance`` checks,
  monkeypatching and module-level state all stay one thing;
* :func:`moved_names` gives a module a ``__getattr__`` for names that left it,
  warning on each access and returning the object from its new home;
* :func:`warn_moved` is the warning itself, for what the two cannot reach (a
  method that goes away).

Both warn with ``DeprecationWarning`` pointing at the importing line
(``stacklevel``), which pytest and ``python -W error`` show by default.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["alias_module", "moved_names", "warn_moved"]

REMOVED_IN = "otpy 0.2"
"""The release in which the old paths go away."""


def warn_moved(old: str, new: str, *, stacklevel: int = 2) -> None:
    """Warn that ``old`` goes away in :data:`REMOVED_IN` and that ``new`` replaces it.

    ``stacklevel`` counts from the caller of :func:`warn_moved`, as for
    :func:`warnings.warn`: 2 names the line that called the deprecated thing.
    """
    warnings.warn(
        f"{old} moved to {new}; use that ({old} goes away in {REMOVED_IN})",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )


def alias_module(old: str, new: str) -> None:
    """Warn that module ``old`` moved to ``new`` and make ``old`` the same module object.

    Call it as the only statement of the old module's file:
    ``alias_module(__name__, "otpy.pg.testing")``.
    """
    # Frames: alias_module <- the shim module <- importlib frames <- the importer.
    # importlib's frames are skipped by the warnings machinery for
    # ``<frozen importlib._bootstrap>``, so stacklevel 3 names the importer.
    warnings.warn(
        f"{old} moved to {new}; import it from there ({old} goes away in {REMOVED_IN})",
        DeprecationWarning,
        stacklevel=3,
    )
    module = importlib.import_module(new)
    sys.modules[old] = module
    parent, _, child = old.rpartition(".")
    if parent and parent in sys.modules:
        setattr(sys.modules[parent], child, module)


def moved_names(
    module: str, moved: Mapping[str, str], *, stacklevel: int = 2
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for names that left ``module``.

    ``moved`` maps each old name to its new home as ``"package.module:name"``::

        __getattr__ = moved_names(
            __name__, {"TooManyWaiters": "otpy.pg.pool.errors:PoolOverloaded"}
        )

    Accessing an old name warns and returns the object from its new home;
    any other missing name raises ``AttributeError`` as usual.  A module
    ``__getattr__`` of its own that calls the returned one passes ``stacklevel=3`` so
    that the warning still names the user's line.
    """

    def __getattr__(name: str) -> Any:
        target = moved.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new_module, _, new_name = target.partition(":")
        warnings.warn(
            f"{module}.{name} moved to {new_module}.{new_name}; "
            f"use that name ({module}.{name} goes away in {REMOVED_IN})",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        return getattr(importlib.import_module(new_module), new_name)

    return __getattr__
