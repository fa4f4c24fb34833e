"""Small mechanisms the runtime and the connector share (internal, but meant for reuse).

* :func:`unwrap_group` / :func:`raise_unwrapped` / :func:`split_cancelled` /
  :func:`only_cancelled` / :func:`first_leaf`: the one home for exception-group
  handling.  Turn the exception group a trio nursery raises back into the one
  exception the caller's code raised, so ``except ValueError`` works around
  any ``async with`` that wraps a nursery.
  trio's own ``_util.raise_single_exception_from_group`` is private, and it
  raises ``AssertionError`` for several errors where we keep the group.
* :func:`check_timeout`, :func:`check_number`, :func:`check_int`,
  :func:`check_bool`: validate an option where it enters, with an error that
  names the option and the value (:class:`~otpy.errors.InvalidArgument`).  A
  ``NaN`` that slips through compares false with everything, so it would
  silently mean "never" or "at once" far from where it was passed.

Callers outside ``otpy`` should not import this module; inside the package it
is the one place for these two mechanisms.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

import trio

from otpy.errors import InvalidArgument

__all__ = [
    "check_bool",
    "check_int",
    "check_number",
    "check_timeout",
    "first_leaf",
    "only_cancelled",
    "raise_unwrapped",
    "split_cancelled",
    "unwrap_group",
]


def unwrap_group(exc: BaseException) -> BaseException:
    """The single exception ``exc`` stands for, with nursery groups peeled off.

    * not a group: ``exc`` itself;
    * a group whose non-cancellation part is one exception (after unwrapping
      nested one-member groups): that exception.  The ``trio.Cancelled`` beside
      it is dropped, which is safe: a cancelled scope raises again at the next
      checkpoint, and the scope that was cancelled is still unwound by it;
    * a group of cancellations only: the first ``trio.Cancelled``, so that the
      cancelled scope catches it as usual (cancellation is never swallowed);
    * a group with several real errors: ``exc`` unchanged (they stay a group,
      as nothing says which one the caller wants).
    """
    while isinstance(exc, BaseExceptionGroup):
        cancelled, rest = exc.split(trio.Cancelled)
        if rest is None:
            assert cancelled is not None
            leaf: BaseException = cancelled
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf
        if len(rest.exceptions) != 1:
            return exc
        exc = rest.exceptions[0]
    return exc


def split_cancelled(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """Split ``exc`` into (its cancellation part, everything else unwrapped).

    An actor that ends needs both answers: whether it was cancelled (killed or
    shut down from outside) and which real error, if any, ended it.  The
    second part goes through :func:`unwrap_group`, so a single error raised in
    a nursery is reported as itself.
    """
    if isinstance(exc, trio.Cancelled):
        return exc, None
    if isinstance(exc, BaseExceptionGroup):
        cancelled, rest = exc.split(trio.Cancelled)
        return cancelled, None if rest is None else unwrap_group(rest)
    return None, exc


def only_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancellation, alone or a group of cancellations only."""
    return split_cancelled(exc)[1] is None


def first_leaf(exc: BaseException) -> BaseException:
    """One exception that stands for ``exc``: its first real error, else its first cancellation.

    For a group whose members are *alternatives* rather than independent
    failures: two tasks waiting on the same socket, one for reading and one
    for writing, both fail with ``ClosedResourceError`` when it is closed, and
    either one says what happened.  :func:`unwrap_group` keeps such a group
    whole (it cannot know the errors are equivalent); this picks the first
    (nested groups flattened, cancellations only when nothing else failed).
    """
    cancelled, rest = split_cancelled(exc)
    leaf = rest if rest is not None else cancelled
    assert leaf is not None
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


def raise_unwrapped(group: BaseException) -> NoReturn:
    """Raise :func:`unwrap_group` of ``group`` with its own traceback, cause and context.

    Use it as ``except BaseExceptionGroup as group: raise_unwrapped(group)`` in
    a context manager that wraps a nursery, so that ``except
    psycopg.errors.DivisionByZero`` around the block catches the caller's own
    error.  Raising inside the ``except`` would make the group the exception's
    ``__context__``; the exception's own chain is restored instead, so its
    traceback reads as if no nursery had been in between.
    """
    single = unwrap_group(group)
    if single is group:
        raise group
    context, cause, suppress = single.__context__, single.__cause__, single.__suppress_context__
    try:
        raise single
    finally:
        single.__context__, single.__cause__ = context, cause
        single.__suppress_context__ = suppress
        del single


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_number(
    option: str,
    value: Any,
    *,
    minimum: float | None = 0.0,
    strict: bool = False,
    allow_infinity: bool = False,
) -> float:
    """``value`` as a float, or :class:`~otpy.errors.InvalidArgument` naming ``option``.

    Refuses non-numbers (``bool`` and strings too), ``NaN``, infinity unless
    ``allow_infinity``, and values below ``minimum`` (or equal to it with ``strict``).
    """
    if not _is_number(value):
        raise InvalidArgument(option, value, "a number")
    number = float(value)
    if math.isnan(number):
        raise InvalidArgument(option, value, "a number, not NaN")
    if math.isinf(number) and not (allow_infinity and number > 0):
        raise InvalidArgument(option, value, "a finite number")
    if minimum is not None and (number <= minimum if strict else number < minimum):
        raise InvalidArgument(option, value, f"{'>' if strict else '>='} {minimum:g}")
    return number


def check_timeout(
    option: str, value: Any, *, allow_negative: bool = False, allow_none: bool = True
) -> float | None:
    """Validate a timeout in seconds: ``None`` (no limit), ``math.inf`` or a number >= 0.

    ``NaN`` is always refused.  ``allow_negative`` keeps a negative value (a
    computed remaining time that has already run out) instead of refusing it.
    """
    if value is None and allow_none:
        return None
    return check_number(option, value, minimum=None if allow_negative else 0.0, allow_infinity=True)


def check_int(option: str, value: Any, *, minimum: int = 0) -> int:
    """``value`` if it is an ``int`` (not a ``bool``) >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(option, value, "an integer")
    if value < minimum:
        raise InvalidArgument(option, value, f">= {minimum}")
    return int(value)


def check_bool(option: str, value: Any) -> bool:
    """``value`` if it is a ``bool``: the string ``"false"`` or ``0`` is refused, not coerced."""
    if not isinstance(value, bool):
        raise InvalidArgument(option, value, "True or False")
    return value
