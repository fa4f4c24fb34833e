"""Child specs and restart backoff (otpy.child_spec): validation and delays, pure."""

from __future__ import annotations

import math
from typing import Any

import pytest

import otpy
from otpy.errors import InvalidArgument

NAN = math.nan


def spec(**kwargs: Any) -> otpy.ChildSpec:
    fields: dict[str, Any] = {"id": "w", "start": otpy.GenServer}
    fields.update(kwargs)
    return otpy.ChildSpec(**fields)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("shutdown", NAN),
        ("shutdown", -1),
        ("shutdown", True),
        ("shutdown", "soon"),
        ("restart", "sometimes"),
        ("type", "manager"),
        ("start", "not callable"),
        ("id", ["unhashable"]),
        ("backoff", 1.5),
        ("start_timeout", NAN),
        ("start_timeout", 0),
        ("start_timeout", -5),
    ],
)
def test_child_spec_refuses_an_invalid_value_naming_the_option(option: str, value: Any) -> None:
    with pytest.raises(InvalidArgument) as info:
        spec(**{option: value})
    assert info.value.option == f"ChildSpec.{option}"
    assert f"ChildSpec.{option}={value!r}" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_child_spec_accepts_infinity_as_the_infinity_shutdown() -> None:
    assert spec(shutdown=math.inf).shutdown is otpy.INFINITY
    assert spec(shutdown=0).shutdown == 0.0
    assert spec(start_timeout=math.inf).start_timeout is None
    assert spec(start_timeout=3).start_timeout == 3.0


@pytest.mark.parametrize(
    ("option", "kwargs"),
    [
        ("Backoff.initial", {"initial": NAN}),
        ("Backoff.maximum", {"maximum": NAN}),
        ("Backoff.maximum", {"maximum": math.inf}),
        ("Backoff.multiplier", {"multiplier": NAN}),
        ("Backoff.multiplier", {"multiplier": 0.5}),
        ("Backoff.jitter", {"jitter": NAN}),
        ("Backoff.jitter", {"jitter": 2}),
        ("Backoff.reset_after", {"reset_after": NAN}),
        ("Backoff.initial", {"initial": "1"}),
    ],
)
def test_backoff_refuses_nan_and_out_of_range_values(option: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument) as info:
        otpy.Backoff(**kwargs)
    assert info.value.option == option


def test_backoff_delays_with_jitter_stay_in_bounds() -> None:
    import random

    backoff = otpy.Backoff(initial=0.5, maximum=8, jitter=0.25)
    rng = random.Random(1)
    for attempt in range(1, 12):
        base = min(8, 0.5 * 2 ** (attempt - 1))
        for _ in range(20):
            assert base * 0.75 <= backoff.delay(attempt, rng) <= base * 1.25
    with pytest.raises(ValueError):
        otpy.Backoff(initial=2, maximum=1)


def test_backoff_without_jitter_doubles_from_initial_up_to_maximum() -> None:
    backoff = otpy.Backoff(initial=0.5, maximum=3)
    assert [backoff.delay(attempt) for attempt in range(1, 7)] == [0.5, 1, 2, 3, 3, 3]


def test_backoff_counts_a_run_as_healthy_after_reset_after_else_after_maximum() -> None:
    assert otpy.Backoff(initial=1, maximum=4, reset_after=100).healthy_after == 100
    assert otpy.Backoff(initial=1, maximum=4).healthy_after == 4


def test_child_spec_defaults_a_supervisor_child_to_infinity_shutdown() -> None:
    worker = otpy.ChildSpec(id="w", start=otpy.GenServer)
    sup = otpy.ChildSpec(id="s", start=otpy.GenServer, type=otpy.SUPERVISOR)
    assert worker.shutdown == 5.0 and worker.restart is otpy.PERMANENT
    assert sup.shutdown is otpy.INFINITY
