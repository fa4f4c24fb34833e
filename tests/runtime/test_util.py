"""otpy._util: the one exception-group unwrapping helper, and the option checks."""

from __future__ import annotations

import math

import pytest
import trio

from otpy._util import (
    check_bool,
    check_int,
    check_number,
    check_timeout,
    only_cancelled,
    raise_unwrapped,
    split_cancelled,
    unwrap_group,
)
from otpy.errors import InvalidArgument


def cancelled() -> trio.Cancelled:
    """A real ``trio.Cancelled`` (it cannot be built directly), caught in its own run."""
    caught: list[trio.Cancelled] = []

    async def cancel_me() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.lowlevel.checkpoint()
            except trio.Cancelled as exc:
                caught.append(exc)
                raise

    trio.run(cancel_me)
    return caught[0]


def test_one_error_in_a_group_unwraps_to_itself_also_nested_or_beside_cancellation() -> None:
    error = ValueError("mine")
    assert unwrap_group(error) is error
    assert unwrap_group(ExceptionGroup("g", [error])) is error
    assert unwrap_group(ExceptionGroup("g", [ExceptionGroup("inner", [error])])) is error
    assert unwrap_group(BaseExceptionGroup("g", [cancelled(), error])) is error


def test_cancellation_is_never_swallowed_and_several_errors_stay_a_group() -> None:
    only_cancelled = BaseExceptionGroup("g", [cancelled(), cancelled()])
    assert isinstance(unwrap_group(only_cancelled), trio.Cancelled)
    several = ExceptionGroup("g", [ValueError("a"), KeyError("b")])
    assert unwrap_group(several) is several


def test_raise_unwrapped_keeps_the_cause() -> None:
    cause = OSError("root cause")
    error = ValueError("mine")
    error.__cause__ = cause
    with pytest.raises(ValueError) as info:
        try:
            raise ExceptionGroup("g", [error])
        except ExceptionGroup as group:
            raise_unwrapped(group)
    assert info.value is error and info.value.__cause__ is cause
    several = ExceptionGroup("g", [ValueError("a"), KeyError("b")])
    with pytest.raises(ExceptionGroup) as group_info:
        raise_unwrapped(several)
    assert group_info.value is several


def test_option_checks_name_the_option_and_refuse_nan_bool_and_strings() -> None:
    for value in (math.nan, True, "1", None):
        with pytest.raises(InvalidArgument, match="opt"):
            check_number("opt", value)
    assert check_number("opt", 2) == 2.0
    with pytest.raises(InvalidArgument):
        check_number("opt", math.inf)
    assert check_number("opt", math.inf, allow_infinity=True) == math.inf
    with pytest.raises(InvalidArgument):
        check_number("opt", 0, strict=True)
    assert check_timeout("t", None) is None
    assert check_timeout("t", -1, allow_negative=True) == -1
    with pytest.raises(InvalidArgument):
        check_timeout("t", -1)
    with pytest.raises(InvalidArgument):
        check_timeout("t", math.nan, allow_negative=True)
    with pytest.raises(InvalidArgument):
        check_int("n", 1.0)
    with pytest.raises(InvalidArgument):
        check_int("n", False)
    assert check_bool("b", False) is False
    with pytest.raises(InvalidArgument, match="'false'"):
        check_bool("b", "false")


async def test_split_cancelled_separates_a_cancellation_from_the_real_error() -> None:
    caught: list[BaseException] = []

    async def boom() -> None:
        raise ValueError("real")

    with trio.CancelScope() as outer:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(boom)
                outer.cancel()
                await trio.sleep_forever()
        except BaseException as exc:
            caught.append(exc)
            # the group holds a real error: not re-raised, so it does not fail the test
    (error,) = caught
    cancelled, rest = split_cancelled(error)
    assert cancelled is not None
    assert isinstance(rest, ValueError)
    assert str(rest) == "real"
    assert not only_cancelled(error)


async def test_only_cancelled_is_true_for_a_group_of_cancellations() -> None:
    caught: list[BaseException] = []
    with trio.CancelScope() as outer:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                outer.cancel()
                await trio.sleep_forever()
        except BaseException as exc:
            caught.append(exc)
            raise
    (error,) = caught
    assert only_cancelled(error)
    assert split_cancelled(error)[1] is None
    plain = ValueError("plain")
    assert split_cancelled(plain) == (None, plain)
    assert not only_cancelled(plain)
