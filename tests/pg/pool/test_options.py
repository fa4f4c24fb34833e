"""Pool and connector options are checked where they enter; the caller's exception stays its own."""

from __future__ import annotations

import math
import re
from typing import Any

import psycopg
import pytest
import trio
from pool_helpers import pool_config

from otpy.pg import pool
from otpy.pg.config import Backoff, ConnectorConfig, DatabaseConfig, PoolConfig
from otpy.pg.errors import ConfigError


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("checkout_timeout", math.nan, "PoolConfig.checkout_timeout: must be a finite number"),
        ("checkout_timeout", math.inf, "PoolConfig.checkout_timeout: must be a finite number"),
        ("checkout_timeout", -1.0, "PoolConfig.checkout_timeout: must be a non-negative"),
        ("checkout_timeout", "5", "PoolConfig.checkout_timeout: expected a number of seconds"),
        ("checkout_timeout", True, "PoolConfig.checkout_timeout: expected a number of seconds"),
        ("max_lifetime", math.nan, "PoolConfig.max_lifetime: must be a finite number"),
        ("max_lifetime", "false", "PoolConfig.max_lifetime: expected a number of seconds"),
        ("max_idle", -0.5, "PoolConfig.max_idle: must be a non-negative"),
        ("health_check_interval", 0, "PoolConfig.health_check_interval: must be a positive"),
        ("max_waiting", -1, "PoolConfig.max_waiting: must be >= 0, got -1"),
        ("max_waiting", 2.5, "PoolConfig.max_waiting: expected an integer, got 2.5"),
        ("min_size", 3, "PoolConfig.min_size: must not exceed max_size (2), got 3"),
        ("max_size", "2", "PoolConfig.max_size: expected an integer, got '2'"),
        ("reconnect", {"initial": 1}, "PoolConfig.reconnect: expected a Backoff"),
        ("database", "", "PoolConfig.database: expected a non-empty string"),
    ],
)
def test_a_pool_config_built_in_code_is_checked(field: str, value: Any, message: str) -> None:
    values: dict[str, Any] = {"name": "p", "database": "db", "min_size": 1, "max_size": 2}
    values[field] = value
    with pytest.raises(ConfigError) as info:
        PoolConfig(**values)
    assert message in str(info.value)


def test_a_backoff_with_nan_cannot_even_reach_a_pool_config() -> None:
    """The reconnect back-off checks its own fields when built, for pools and everyone else."""
    with pytest.raises(ValueError, match=r"Backoff\.initial=nan"):
        Backoff(initial=math.nan)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("port", "5432", "DatabaseConfig.port: expected an integer, got '5432'"),
        ("port", 0, "DatabaseConfig.port: must be between 1 and 65535, got 0"),
        ("port", True, "DatabaseConfig.port: expected an integer, got True"),
        ("connect_timeout", math.nan, "DatabaseConfig.connect_timeout: must be a finite"),
        ("connect_timeout", -2, "DatabaseConfig.connect_timeout: must be a non-negative"),
        ("sslmode", "sometimes", "DatabaseConfig.sslmode: unknown sslmode 'sometimes'"),
        ("host", "", "DatabaseConfig.host: expected a non-empty string"),
        ("password", "clear", "DatabaseConfig.password: expected a Secret, got str"),
        ("params", {"keepalives": 1}, "DatabaseConfig.params.keepalives: expected a string"),
    ],
)
def test_a_database_config_built_in_code_is_checked(field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        DatabaseConfig(name="db", **{field: value})
    assert message in str(info.value)
    assert "clear" not in str(info.value)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("checkout_timeout = inf", "pools.p.checkout_timeout: must be a finite number"),
        ("checkout_timeout = nan", "pools.p.checkout_timeout: must be a finite number"),
        ("max_lifetime = inf", "pools.p.max_lifetime: must be a finite number of seconds, got inf"),
        ('max_lifetime = "false"', "pools.p.max_lifetime: expected a number of seconds"),
        ("health_check_interval = 0", "pools.p.health_check_interval: must be a positive"),
        ("size = [2, 1]", "pools.p.size: min must not exceed max, got [2, 1]"),
        ("size = 1.5", "pools.p.size: expected an integer or [min, max], got 1.5"),
        ("reconnect = { multiplier = inf }", "pools.p.reconnect.multiplier: expected a finite"),
        ("reconnect = { maximum = nan }", "pools.p.reconnect.maximum: expected a number, not NaN"),
    ],
)
def test_the_loader_refuses_the_same_values(toml: str, message: str) -> None:
    text = f'[databases.db]\nhost = "h"\n[pools.p]\ndatabase = "db"\nsize = 1\n{toml}\n'
    if toml.startswith("size"):
        text = text.replace("size = 1\n", "")
    with pytest.raises(ConfigError) as info:
        ConnectorConfig.from_toml_string(text)
    assert message in str(info.value)


def test_database_settings_refuse_non_finite_and_mistyped_values() -> None:
    for entry, message in [
        ({"connect_timeout": math.inf}, "databases.db.connect_timeout: must be a finite"),
        ({"port": [5432, "x"]}, "databases.db.port[1]: expected an integer, got 'x'"),
        ({"params": {"keepalives_idle": math.nan}}, "databases.db.params.keepalives_idle"),
    ]:
        with pytest.raises(ConfigError) as info:
            ConnectorConfig.from_mapping({"databases": {"db": entry}})
        assert message in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"wait": "false"}, "open_pool(wait): expected true or false, got 'false'"),
        ({"wait": 0}, "open_pool(wait): expected true or false, got 0"),
        ({"timeout": math.nan}, "open_pool(timeout): must be a finite number"),
        ({"timeout": -1}, "open_pool(timeout): must be a non-negative"),
        ({"leak_check_interval": 0}, "open_pool(leak_check_interval): must be a positive"),
        ({"leak_check_interval": math.inf}, "open_pool(leak_check_interval): must be a finite"),
        ({"timing": 1}, "open_pool(timing): expected true or false, got 1"),
        ({"hold_warning": 0}, "open_pool(hold_warning): must be a positive"),
    ],
)
async def test_open_pool_checks_its_keyword_arguments(
    db: DatabaseConfig, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        async with pool.open_pool("p", pool_config(1), db, **kwargs):
            pass  # pragma: no cover
    assert message in str(info.value)


async def test_open_pool_checks_its_configs(db: DatabaseConfig) -> None:
    with pytest.raises(ConfigError, match=r"open_pool\(pool\): expected a PoolConfig, got dict"):
        async with pool.open_pool("p", {"size": 1}, db):  # type: ignore[arg-type]
            pass  # pragma: no cover


async def test_the_callers_exception_leaves_open_pool_unwrapped(db: DatabaseConfig) -> None:
    try:
        async with pool.open_pool("p", pool_config(1), db) as p, p.connection() as conn:
            await conn.execute("SELECT 1 / 0")
    except psycopg.errors.DivisionByZero as exc:
        caught: BaseException = exc
    assert type(caught) is psycopg.errors.DivisionByZero
    with pytest.raises(KeyError, match="mine"):
        async with pool.open_pool("p", pool_config(1), db):
            raise KeyError("mine")
    # The pool stopped and its name is free again.
    async with pool.open_pool("p", pool_config(1), db):
        assert (await pool.query("p", "SELECT 2")).scalar() == 2


async def test_cancelling_the_block_of_open_pool_still_cancels(db: DatabaseConfig) -> None:
    with trio.CancelScope() as scope:
        async with pool.open_pool("p", pool_config(1), db):
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    with trio.move_on_after(0.05) as timeout:
        async with pool.open_pool("p", pool_config(1), db):
            await trio.sleep_forever()
    assert timeout.cancelled_caught


async def test_per_call_timeouts_are_checked_even_when_a_connection_is_free(
    db: DatabaseConfig,
) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        calls = [
            ("connection(timeout)", lambda: pool.connection("p", timeout=math.nan)),
            ("connection(timeout)", lambda: p.transaction(timeout=-1)),
            ("query(timeout)", lambda: pool.query("p", "SELECT 1", timeout=math.nan)),
            ("query(checkout_timeout)", lambda: p.query("SELECT 1", checkout_timeout=math.inf)),
            ("acquire(timeout)", lambda: pool.acquire("p", timeout=math.nan)),
            ("wait_ready(timeout)", lambda: p.wait_ready(timeout=math.nan)),
            ("wait_ready(connections)", lambda: p.wait_ready(connections=True)),  # type: ignore[arg-type]
        ]
        for name, call in calls:
            with pytest.raises(ConfigError, match=rf"^{re.escape(name)}: "):
                result = call()
                if hasattr(result, "__await__"):
                    await result
        assert (await pool.query("p", "SELECT 1", timeout=5)).scalar() == 1


def test_pool_spec_checks_its_leak_check_interval(db: DatabaseConfig) -> None:
    with pytest.raises(ConfigError, match=r"pool_spec\(leak_check_interval\): must be a finite"):
        pool.pool_spec("p", pool_config(1), db, leak_check_interval=math.nan)
    with pytest.raises(ConfigError, match=r"pool_spec\(timing\): expected true or false"):
        pool.pool_spec("p", pool_config(1), db, timing="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"pool_spec\(hold_warning\): must be a finite"):
        pool.pool_spec("p", pool_config(1), db, hold_warning=math.inf)
