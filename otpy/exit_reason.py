"""Why an actor exited: :class:`ExitReason` and the four reasons every runtime module names.

A value of its own, below both :mod:`otpy.errors` (whose errors carry the
reason an actor died of) and :mod:`otpy.actor` (which records it), so that
neither has to import the other: errors are raised by the runtime, and the
runtime's modules build on its errors.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["KILLED", "NOPROC", "NORMAL", "SHUTDOWN", "ExitReason"]


@attrs.frozen
class ExitReason:
    """Why an actor exited: the Erlang exit reason, as a value.

    ``kind`` is one of ``"normal"`` (it stopped by itself), ``"shutdown"`` (its
    supervisor or owner asked it to stop), ``"killed"`` (it was cancelled
    without running ``terminate``), ``"noproc"`` (there was no such actor) or
    ``"error"`` (it crashed; ``error`` is the exception).  ``detail`` carries an
    optional user term, like ``{shutdown, Term}``.

    ``normal`` and ``shutdown`` are the *normal* reasons: a transient child is
    not restarted after them and links do not propagate them.
    """

    kind: str
    error: BaseException | None = attrs.field(default=None, eq=False)
    detail: Any = None

    @classmethod
    def crashed(cls, error: BaseException) -> ExitReason:
        """The reason for an actor that died of ``error``."""
        return cls("error", error)

    @classmethod
    def shutdown(cls, detail: Any = None) -> ExitReason:
        """A ``shutdown`` reason, optionally with a detail (OTP's ``{shutdown, Term}``)."""
        return cls("shutdown", None, detail) if detail is not None else SHUTDOWN

    @property
    def normal(self) -> bool:
        """True for ``normal`` and ``shutdown``: an orderly exit, not a failure."""
        return self.kind in ("normal", "shutdown")

    @property
    def abnormal(self) -> bool:
        """True for crashes and kills: the exits that restart transient children."""
        return not self.normal

    def __str__(self) -> str:
        if self.error is not None:
            return f"{type(self.error).__name__}: {self.error}"
        if self.detail is not None:
            return f"{self.kind}: {self.detail!r}"
        return self.kind


NORMAL = ExitReason("normal")
"""The actor finished on its own (Erlang ``normal``)."""
SHUTDOWN = ExitReason("shutdown")
"""The actor was asked to stop by its supervisor or owner (Erlang ``shutdown``)."""
KILLED = ExitReason("killed")
"""The actor was cancelled without running ``terminate`` (Erlang ``killed``)."""
NOPROC = ExitReason("noproc")
"""There was no actor to talk to (Erlang ``noproc``)."""
