"""The package face: public names listed once, old spellings kept working loudly."""

from __future__ import annotations

import pytest

from otpy.pg import pool
from otpy.pg.pool import errors, manager, types


def test_every_public_name_has_one_spelling_on_the_face() -> None:
    objects = [getattr(pool, name) for name in pool.__all__]
    assert len({id(obj) for obj in objects}) == len(objects)


def test_every_public_class_and_function_is_defined_in_a_module_of_the_package() -> None:
    for name in pool.__all__:
        obj = getattr(pool, name)
        if hasattr(obj, "__qualname__"):  # not the Query type alias
            home = obj.__module__
            assert home.startswith("otpy.pg.pool.") and home != "otpy.pg.pool", name


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("TooManyWaiters", errors.PoolOverloaded),
        ("HOLD_BUCKETS", types.HOLD_BUCKETS),
        ("WAIT_BUCKETS", types.WAIT_BUCKETS),
        ("LEAK_CHECK_INTERVAL", manager.LEAK_CHECK_INTERVAL),
        ("make_pool_supervisor", manager.make_pool_supervisor),
    ],
)
def test_names_that_left_the_face_still_resolve_with_a_deprecation_warning(
    old: str, new: object
) -> None:
    assert old not in pool.__all__
    with pytest.warns(DeprecationWarning, match=old):
        assert getattr(pool, old) is new


def test_too_many_waiters_in_the_errors_module_warns_and_is_pool_overloaded() -> None:
    assert "TooManyWaiters" not in errors.__all__
    with pytest.warns(DeprecationWarning, match="TooManyWaiters"):
        assert errors.TooManyWaiters is errors.PoolOverloaded


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        pool.no_such_name  # noqa: B018
