"""A running pool by name: the :class:`Pool` handle, :func:`open_pool`, statistics.

A pool is found by its registered name (see :mod:`otpy.pg.pool.manager`), so
any task can use it without holding an object.  :class:`Pool` is the object
for those who prefer one: what :func:`open_pool` yields, a name plus a cached
lookup that follows the pool across manager restarts, whose methods are the
functions of :mod:`otpy.pg.pool.checkout` with the pool filled in.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import trio
from psycopg.abc import Params

from otpy.pg.config import DatabaseConfig, PoolConfig, check_bool, check_seconds
from otpy.pg.errors import ConfigError
from otpy.pg.pool.checkout import (
    Lease,
    PooledConnection,
    PooledTransaction,
    Query,
    acquire,
    core_of,
    query,
)
from otpy.pg.pool.core import PoolCore
from otpy.pg.pool.errors import PoolNotFound, PoolTimeout
from otpy.pg.pool.manager import LEAK_CHECK_INTERVAL, lookup, running_pool
from otpy.pg.pool.types import PoolStats, QueryResult

__all__ = ["Pool", "open_pool", "stats", "wait_ready"]


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


def stats(pool: str | Pool) -> PoolStats:
    """A snapshot of the pool's sizes and counters (no I/O, no message)."""
    return core_of(pool).stats()


async def wait_ready(
    pool: str | Pool,
    *,
    connections: int | None = None,
    timeout: float | None = None,  # noqa: ASYNC109
) -> PoolStats:
    """Wait until ``connections`` (default: ``min_size``) connections are open.

    Useful at start-up and in tests.

    Raises:
        PoolUnavailable: the pool cannot open connections (server unreachable).
        PoolTimeout: not ready within ``timeout`` seconds (default: the pool's
            ``checkout_timeout``).
    """
    check_seconds(timeout, "wait_ready(timeout)", optional=True)
    if connections is not None and (
        isinstance(connections, bool) or not isinstance(connections, int) or connections < 0
    ):
        raise ConfigError(
            "wait_ready(connections)", f"expected an integer >= 0, got {connections!r}"
        )
    core = core_of(pool)
    wanted = core.config.min_size if connections is None else connections
    limit = core.config.checkout_timeout if timeout is None else timeout

    def opened() -> int:
        return len(core.slots) - core.connecting

    def ready() -> bool:
        return core.closed or core.down or opened() >= wanted

    with trio.move_on_after(limit):
        await core.wait_for(ready)
    current = core.stats()
    if core.closed:
        raise core._closed_error()
    if core.down:
        raise core._unavailable_error()
    if opened() < wanted:
        raise PoolTimeout(
            f"pool {core.name!r}: {opened()} of {wanted} connections open after {limit:g} s",
            core.name,
            limit,
            current.size,
            current.waiting,
        )
    return current


class Pool:
    """A handle on a running pool, by name (what :func:`open_pool` yields).

    Its methods are the module functions with the pool filled in.  It finds
    the pool through the registry, so it keeps working after the pool's
    manager was restarted by its supervisor.
    """

    __slots__ = ("_core", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._core: PoolCore | None = None

    def __repr__(self) -> str:
        return f"<Pool {self.name!r}>"

    def _resolve(self) -> PoolCore:
        core = self._core
        if core is None or core.closed:
            core = self._core = lookup(self.name)
        return core

    def connection(
        self,
        *,
        timeout: float | None = None,
    ) -> PooledConnection:
        """See :func:`connection`."""
        return PooledConnection(self, timeout)

    def transaction(
        self,
        *,
        timeout: float | None = None,
    ) -> PooledTransaction:
        """See :func:`transaction`."""
        return PooledTransaction(self, timeout)

    async def query(
        self,
        sql: Query,
        params: Params | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        checkout_timeout: float | None = None,
    ) -> QueryResult:
        """See :func:`query`."""
        return await query(self, sql, params, timeout=timeout, checkout_timeout=checkout_timeout)

    async def acquire(self, *, timeout: float | None = None) -> Lease:  # noqa: ASYNC109
        """See :func:`acquire`."""
        return await acquire(self, timeout=timeout)

    def stats(self) -> PoolStats:
        """See :func:`stats`."""
        return self._resolve().stats()

    async def wait_ready(
        self,
        *,
        connections: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> PoolStats:
        """See :func:`wait_ready`."""
        return await wait_ready(self, connections=connections, timeout=timeout)

    async def wait_for(self, predicate: Callable[[PoolStats], object]) -> None:
        """Wait until ``predicate(stats)`` is true, re-checked on every change of the pool.

        For tests and operational scripts ("until the pool has refilled");
        wrap it in ``trio.fail_after``.  Follows the pool across manager restarts.
        """
        while True:
            try:
                core = self._resolve()
            except PoolNotFound:
                await trio.sleep(0.01)
                continue
            if predicate(core.stats()):
                return

            def satisfied(core: PoolCore = core) -> bool:
                return core.closed or bool(predicate(core.stats()))

            await core.wait_for(satisfied)
            if not core.closed:
                return


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
    check_seconds(
        leak_check_interval, "open_pool(leak_check_interval)", optional=True, positive=True
    )
    check_bool(timing, "open_pool(timing)")
    check_seconds(hold_warning, "open_pool(hold_warning)", optional=True, positive=True)
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
