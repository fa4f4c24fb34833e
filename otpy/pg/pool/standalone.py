"""A pool outside any application: :func:`open_pool`, for tests and scripts.

Inside an application a pool is a child of the connector's supervisor
(:func:`~otpy.pg.pool.manager.pool_spec`).  :func:`open_pool` runs the same
tree in a nursery of its own for one ``async with`` block, checks its
arguments first as the configuration loader does, and yields a
:class:`~otpy.pg.pool.checkout.Pool` handle.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from otpy.pg.config import DatabaseConfig, PoolConfig, check_bool, check_seconds
from otpy.pg.errors import ConfigError
from otpy.pg.pool.checkout import Pool
from otpy.pg.pool.manager import LEAK_CHECK_INTERVAL, check_tree_options, running_pool

__all__ = ["open_pool"]


def _check_configs(name: str, pool: PoolConfig, database: DatabaseConfig) -> None:
    """Refuse what is not a pool name, a PoolConfig and a (usable) DatabaseConfig."""
    if not isinstance(name, str) or not name:
        raise ConfigError("open_pool(name)", f"expected a non-empty string, got {name!r}")
    if not isinstance(pool, PoolConfig):
        raise ConfigError("open_pool(pool)", f"expected a PoolConfig, got {type(pool).__name__}")
    if not isinstance(database, DatabaseConfig):
        raise ConfigError(
            "open_pool(database)", f"expected a DatabaseConfig, got {type(database).__name__}"
        )
    database.check()


@contextlib.asynccontextmanager
async def open_pool(
    name: str,
    pool: PoolConfig,
    database: DatabaseConfig,
    *,
    wait: bool = True,
    timeout: float | None = None,  # noqa: ASYNC109
    leak_check_interval: float | None = LEAK_CHECK_INTERVAL,
    timing: bool = True,
    hold_warning: float | None = None,
) -> AsyncIterator[Pool]:
    """Run pool ``name`` for the ``async with`` block, standalone (tests, scripts).

    Starts the pool's supervision tree in a nursery of its own, registers the
    name, and, with ``wait=True``, waits until ``min_size`` connections are
    open (see :func:`wait_ready`).  Leaving the block stops the tree: idle
    connections are closed, waiters fail with :class:`PoolClosed`.
    Inside an application, use :func:`pool_spec` instead.

    The arguments are checked first, as the configuration loader checks its
    own (``wait`` a bool, ``timeout`` and ``leak_check_interval`` finite
    seconds or ``None``, the database's files and service, see
    :meth:`DatabaseConfig.check`).  An exception raised in the block reaches
    the caller as itself (``except psycopg.errors.DivisionByZero`` works),
    not wrapped in an exception group.  ``timing`` and ``hold_warning``:
    see :func:`pool_spec`.

    Raises:
        ConfigError: an invalid argument, naming it and its value.
        PoolUnavailable / PoolTimeout: with ``wait``, as for :func:`wait_ready`.
    """
    check_bool(wait, "open_pool(wait)")
    check_seconds(timeout, "open_pool(timeout)", optional=True)
    check_tree_options("open_pool", leak_check_interval, timing, hold_warning)
    _check_configs(name, pool, database)
    async with running_pool(
        name,
        pool,
        database,
        leak_check_interval=leak_check_interval,
        timing=timing,
        hold_warning=hold_warning,
    ):
        handle = Pool(name)
        if wait:
            await handle.wait_ready(timeout=timeout)
        yield handle
