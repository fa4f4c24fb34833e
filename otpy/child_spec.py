"""Child specifications: how a supervisor starts, restarts and stops one child.

A :class:`ChildSpec` is a plain immutable value (Elixir's child spec map), so
specs can be built in one line, compared, stored and reused.  The enums accept
their Erlang spellings as strings too (``restart="transient"``,
``shutdown="brutal_kill"``), so configuration files can name them directly.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from otpy._util import check_number
from otpy.errors import InvalidArgument

if TYPE_CHECKING:
    from otpy.gen_server import GenServer

__all__ = [
    "BRUTAL_KILL",
    "INFINITY",
    "PERMANENT",
    "SUPERVISOR",
    "TEMPORARY",
    "TRANSIENT",
    "WORKER",
    "Backoff",
    "ChildSpec",
    "ChildType",
    "Restart",
    "Shutdown",
]


class Restart(enum.Enum):
    """When a supervisor restarts a child that exited (OTP restart types)."""

    PERMANENT = "permanent"
    """Always restarted."""
    TRANSIENT = "transient"
    """Restarted only after an abnormal exit (a crash or kill, not normal/shutdown)."""
    TEMPORARY = "temporary"
    """Never restarted; its spec is removed when it exits."""


class Shutdown(enum.Enum):
    """The non-numeric shutdown kinds; a number is a graceful timeout in seconds."""

    BRUTAL_KILL = "brutal_kill"
    """Cancel the child at once, without running ``terminate``."""
    INFINITY = "infinity"
    """Wait for the child's ``terminate`` however long it takes (default for supervisors)."""


class ChildType(enum.Enum):
    """Whether a child is a worker or a supervisor (decides the default shutdown)."""

    WORKER = "worker"
    """A server doing work; its shutdown defaults to 5 s."""
    SUPERVISOR = "supervisor"
    """A supervisor; its shutdown defaults to :data:`INFINITY` so its children can stop."""


_E = TypeVar("_E", bound=enum.Enum)

PERMANENT = Restart.PERMANENT
TRANSIENT = Restart.TRANSIENT
TEMPORARY = Restart.TEMPORARY
BRUTAL_KILL = Shutdown.BRUTAL_KILL
"""Shutdown: cancel the child at once, without asking it to stop (Erlang's ``brutal_kill``)."""
INFINITY = Shutdown.INFINITY
"""Shutdown: wait as long as the child takes to stop (the default for supervisors)."""
WORKER = ChildType.WORKER
SUPERVISOR = ChildType.SUPERVISOR


@attrs.frozen
class Backoff:
    """Exponential restart delay for one child (beyond OTP, for reconnect loops).

    The n-th consecutive restart waits ``min(maximum, initial * multiplier**(n-1))``
    seconds, scaled by a random factor in ``[1 - jitter, 1 + jitter]`` so that
    many children do not retry in lock step (and never more than ``maximum``).
    The same value paces reconnect loops that are not restarts (a pool
    worker's connection attempts), so there is one back-off type in otpy.
    A child that ran for at least
    ``reset_after`` seconds (default: ``maximum``) counts as healthy again and
    its next restart waits ``initial`` again.  Restarts still count towards the
    supervisor's intensity, which is what eventually gives up.
    """

    initial: float = 0.1
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.0
    reset_after: float | None = None

    def __attrs_post_init__(self) -> None:
        # Every field is checked here, where the value enters: a NaN would
        # otherwise compare false everywhere and make restarts wait forever
        # (or not at all) far from the mistake.
        initial = check_number("Backoff.initial", self.initial)
        maximum = check_number("Backoff.maximum", self.maximum)
        check_number("Backoff.multiplier", self.multiplier, minimum=1.0)
        check_number("Backoff.jitter", self.jitter)
        if self.jitter > 1:
            raise InvalidArgument("Backoff.jitter", self.jitter, "a number within [0, 1]")
        if maximum < initial:
            raise InvalidArgument("Backoff.maximum", self.maximum, f">= initial ({initial:g})")
        if self.reset_after is not None:
            check_number("Backoff.reset_after", self.reset_after)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before restart number ``attempt`` (1-based) of a run of failures."""
        base = min(self.maximum, self.initial * self.multiplier ** max(0, attempt - 1))
        if self.jitter:
            base *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, min(self.maximum, base))

    @property
    def healthy_after(self) -> float:
        """How long a child must run before its failure count is reset."""
        return self.maximum if self.reset_after is None else self.reset_after


def _enum(option: str, kind: type[_E], value: Any) -> _E:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        raise InvalidArgument(option, value, f"one of {choices}") from None


def _restart(value: Any) -> Restart:
    return _enum("ChildSpec.restart", Restart, value)


def _type(value: Any) -> ChildType:
    return _enum("ChildSpec.type", ChildType, value)


def _shutdown(value: Any) -> float | Shutdown:
    if isinstance(value, Shutdown | str):
        return _enum("ChildSpec.shutdown", Shutdown, value)
    seconds = check_number("ChildSpec.shutdown", value, allow_infinity=True)
    return INFINITY if seconds == math.inf else seconds


def _start_timeout(value: Any) -> float | None:
    if value is None:
        return None
    seconds = check_number("ChildSpec.start_timeout", value, strict=True, allow_infinity=True)
    return None if seconds == math.inf else seconds


def _check_id(_: Any, __: Any, value: Any) -> None:
    try:
        hash(value)
    except TypeError:
        raise InvalidArgument("ChildSpec.id", value, "a hashable value") from None


def _check_start(_: Any, __: Any, value: Any) -> None:
    if not callable(value):
        raise InvalidArgument(
            "ChildSpec.start", value, "a callable that returns a new GenServer instance"
        )


def _check_backoff(_: Any, __: Any, value: Any) -> None:
    if value is not None and not isinstance(value, Backoff):
        raise InvalidArgument("ChildSpec.backoff", value, "an otpy.Backoff or None")


def _default_shutdown(spec: Any) -> float | Shutdown:
    return INFINITY if spec.type is ChildType.SUPERVISOR else 5.0


@attrs.frozen
class ChildSpec:
    """How to run one child: the OTP child spec as an immutable value.

    ``start`` builds a *fresh* server instance for every (re)start, so no state
    leaks from a crashed incarnation into the next.  ``shutdown`` is a graceful
    timeout in seconds (``terminate`` runs, then the child is cancelled),
    :data:`BRUTAL_KILL` or :data:`INFINITY`; it defaults to 5 s for workers and
    infinity for supervisors, as in OTP.  ``name`` registers the child (a plain
    name or ``Via``), so it can be called by name across restarts.
    ``start_timeout`` (seconds, None = no limit) bounds every start and restart
    of the child: an ``init`` still running then is cancelled and the start
    fails with :class:`~otpy.errors.StartTimeout`.

    Every field is checked when the spec is built (a ``NaN`` or negative
    shutdown, a ``start`` that is not callable, an unknown restart type ...):
    :class:`~otpy.errors.InvalidArgument` names the field and the value.
    """

    id: Hashable = attrs.field(validator=_check_id)
    start: Callable[[], GenServer] = attrs.field(validator=_check_start)
    restart: Restart = attrs.field(default=Restart.PERMANENT, converter=_restart)
    type: ChildType = attrs.field(default=ChildType.WORKER, converter=_type)
    shutdown: float | Shutdown = attrs.field(
        default=attrs.Factory(_default_shutdown, takes_self=True), converter=_shutdown
    )
    name: Any = None
    backoff: Backoff | None = attrs.field(default=None, validator=_check_backoff)
    start_timeout: float | None = attrs.field(default=None, converter=_start_timeout)
