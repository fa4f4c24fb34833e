"""Connection pools as actors: the Python counterpart of epg_connector's ``epg_pool``.

Each pool is a small supervision tree (a manager actor, one worker actor per
connection; see :mod:`otpy.pg.pool.manager`), registered by name, so any task
of the application can write::

    from otpy.pg import pool

    async with pool.connection("main_pool") as conn:        # epg_pool:with/2
        cur = await conn.execute("SELECT id, name FROM users WHERE id = %s", (42,))
        row = await cur.fetchone()

    result = await pool.query("main_pool", "INSERT INTO t VALUES (%s) RETURNING id", (1,))
    new_id = result.scalar()                                  # epg_pool:query/3

    async with pool.transaction("main_pool") as conn:         # epg_pool:transaction/2
        await conn.execute("UPDATE accounts SET ...")         # COMMIT, or ROLLBACK on error

    pool.stats("main_pool")                                   # PoolStats snapshot

Start a pool with :func:`pool_spec` under a supervisor (what the connector
application does), or standalone with ``async with open_pool(name, pool_config,
db_config) as p:``.

Connections are psycopg connections driven by trio
(:class:`~otpy.pg.connection.TrioConnection`) in **autocommit** mode, like
epgsql: each statement outside :func:`transaction` commits on its own.  A
connection always goes back to the pool at the end of the block, whatever
happens in it; one returned inside a transaction or in error is rolled back,
one returned busy, closed or broken is replaced, before anyone else gets it.
Returning a clean connection costs no database round trip.

Session state that only the server knows (``SET`` without ``LOCAL``,
``LISTEN``, temporary tables, advisory locks) is *not* reset, since detecting
it would cost a round trip on every return: prefer ``SET LOCAL`` inside
:func:`transaction`, or ``await conn.close()`` at the end of the block to have
the connection replaced.

See ``docs/pools.md`` for the design and the measurements behind it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psycopg
import trio
from psycopg import sql as _sql
from psycopg.abc import Params

from otpy.pg.config import DatabaseConfig, PoolConfig, check_bool, check_seconds
from otpy.pg.errors import ConfigError
from otpy.pg.pool.core import PoolCore, Slot
from otpy.pg.pool.errors import (
    PoolClosed,
    PoolError,
    PoolNotFound,
    PoolOverloaded,
    PoolTimeout,
    PoolUnavailable,
    QueryTimeout,
    TooManyWaiters,
)
from otpy.pg.pool.manager import (
    LEAK_CHECK_INTERVAL,
    lookup,
    make_pool_supervisor,
    pool_key,
    pool_spec,
    running_pool,
)
from otpy.pg.pool.types import HOLD_BUCKETS, WAIT_BUCKETS, PoolStats, QueryResult

if TYPE_CHECKING:
    from psycopg.rows import TupleRow

    from otpy.pg.connection import TrioConnection

Query = str | bytes | _sql.SQL | _sql.Composed
"""A statement: text with psycopg placeholders (``%s``), or a :mod:`psycopg.sql` composition."""

__all__ = [
    "HOLD_BUCKETS",
    "LEAK_CHECK_INTERVAL",
    "WAIT_BUCKETS",
    "Lease",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolNotFound",
    "PoolOverloaded",
    "PoolStats",
    "PoolTimeout",
    "PoolUnavailable",
    "PooledConnection",
    "PooledTransaction",
    "QueryResult",
    "QueryTimeout",
    "TooManyWaiters",
    "acquire",
    "connection",
    "make_pool_supervisor",
    "open_pool",
    "pool_key",
    "pool_spec",
    "query",
    "stats",
    "transaction",
    "wait_ready",
]


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


def _core(pool: str | Pool) -> PoolCore:
    if type(pool) is str:
        return lookup(pool)
    if isinstance(pool, Pool):
        return pool._resolve()
    raise TypeError(f"expected a pool name or a Pool, got {pool!r}")


async def _checkin(core: PoolCore, slot: Slot) -> None:
    if not core.checkin(slot):
        assert slot.conn is not None
        await slot.conn.close()


class PooledConnection:
    """What :func:`connection` returns: an async context manager lending a connection.

    A class with ``__slots__`` rather than an ``asynccontextmanager``
    generator, and ``__aexit__`` a plain function returning a ready awaitable
    when the check-in is clean: the checkout path is hot, and each coroutine
    object spared is measurable (see docs/pools.md).
    """

    __slots__ = ("_core", "_pool", "_slot", "_timeout")

    def __init__(self, pool: str | Pool, timeout: float | None) -> None:
        if timeout is not None:
            check_seconds(timeout, "connection(timeout)")
        self._pool = pool
        self._timeout = timeout
        self._slot: Slot | None = None

    async def __aenter__(self) -> TrioConnection[TupleRow]:
        pool = self._pool
        core = self._core = lookup(pool) if type(pool) is str else _core(pool)
        await trio.lowlevel.checkpoint_if_cancelled()
        slot = core.checkout_nowait()
        if slot is None:
            slot = await core.enqueue(self._timeout)
        self._slot = slot
        conn = slot.conn
        assert conn is not None
        return conn

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[bool | None]:
        slot = self._slot
        if slot is not None:
            self._slot = None
            if not self._core.checkin(slot):
                assert slot.conn is not None
                return _close(slot.conn)
        return _DONE


class _Done:
    """An awaitable that completes at once with None."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


_DONE = _Done()


async def _close(conn: TrioConnection[TupleRow]) -> None:
    await conn.close()


class PooledTransaction(PooledConnection):
    """What :func:`transaction` returns: a pooled connection inside ``conn.transaction()``.

    psycopg's own transaction block does the BEGIN/COMMIT/ROLLBACK (so
    savepoints and :class:`psycopg.Rollback` work as usual); the connection
    goes back to the pool after it, whatever happened.
    """

    __slots__ = ("_tx",)

    async def __aenter__(self) -> TrioConnection[TupleRow]:
        conn = await super().__aenter__()
        try:
            tx = conn.transaction()
            await tx.__aenter__()
        except BaseException:
            await PooledConnection.__aexit__(self, None, None, None)
            raise
        self._tx = tx
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            return await self._tx.__aexit__(exc_type, exc, tb)
        finally:
            await PooledConnection.__aexit__(self, exc_type, exc, tb)


def connection(
    pool: str | Pool,
    *,
    timeout: float | None = None,
) -> PooledConnection:
    """Check out a connection for the ``async with`` block (``epg_pool:with/2``).

    The block gets a real psycopg connection (a
    :class:`~otpy.pg.connection.TrioConnection`, autocommit).  It goes back to
    the pool when the block ends, however it ends (exception, cancellation).
    ``timeout`` overrides the pool's ``checkout_timeout`` for this checkout
    (finite seconds >= 0: ``NaN``, infinite or negative values raise
    :class:`~otpy.pg.errors.ConfigError` at once).

    Raises (on entry):
        PoolNotFound: no pool of that name runs.
        PoolTimeout: no connection became free within the timeout.
        PoolOverloaded: ``max_waiting`` callers already wait.
        PoolUnavailable: the pool has no connection and cannot open one.
        PoolClosed: the pool stopped.
    """
    return PooledConnection(pool, timeout)


def transaction(
    pool: str | Pool,
    *,
    timeout: float | None = None,
) -> PooledTransaction:
    """Check out a connection and run the block in a transaction (``epg_pool:transaction/2``).

    ``BEGIN`` on entry, ``COMMIT`` when the block succeeds, ``ROLLBACK`` when
    it raises (the exception propagates; raise :class:`psycopg.Rollback` to
    roll back quietly).  Raises the same errors as :func:`connection` on
    entry, and the server's error if the ``COMMIT`` fails.
    """
    return PooledTransaction(pool, timeout)


async def _run_query(
    conn: psycopg.AsyncConnection[Any], sql: Query, params: Params | None
) -> QueryResult:
    cur = conn.cursor()
    await cur.execute(sql, params)
    description = cur.description
    if description is None:
        return QueryResult((), [], cur.rowcount, cur.statusmessage)
    rows = await cur.fetchall()
    return QueryResult(
        tuple(column.name for column in description), rows, cur.rowcount, cur.statusmessage
    )


async def query(
    pool: str | Pool | psycopg.AsyncConnection[Any],
    sql: Query,
    params: Params | None = None,
    *,
    timeout: float | None = None,  # noqa: ASYNC109
    checkout_timeout: float | None = None,
) -> QueryResult:
    """Run one statement on a pooled connection and return its result (``epg_pool:query/3``).

    ``pool`` is a pool name, a :class:`Pool`, or a connection already checked
    out (as epg_pool accepts a connection instead of a pool).  Placeholders
    are psycopg's (``%s``, ``%(name)s``).  The statement commits on its own
    (autocommit).  ``timeout`` bounds the statement: when it expires the query
    is cancelled on the server and :class:`QueryTimeout` raised.
    ``checkout_timeout`` overrides the pool's for this call.

    Raises:
        psycopg.Error: the server's error for the statement.
        QueryTimeout: the statement ran longer than ``timeout``.
        PoolError: as for :func:`connection`.
    """
    if timeout is not None:
        check_seconds(timeout, "query(timeout)")
    if checkout_timeout is not None:
        check_seconds(checkout_timeout, "query(checkout_timeout)")
    if isinstance(pool, psycopg.AsyncConnection):
        return await _query_with_timeout(pool, sql, params, timeout)
    core = lookup(pool) if type(pool) is str else _core(pool)
    await trio.lowlevel.checkpoint_if_cancelled()
    slot = core.checkout_nowait()
    if slot is None:
        slot = await core.enqueue(checkout_timeout)
    try:
        conn = slot.conn
        assert conn is not None
        if timeout is None:
            return await _run_query(conn, sql, params)
        return await _query_with_timeout(conn, sql, params, timeout, core.name)
    finally:
        await _checkin(core, slot)


async def _query_with_timeout(
    conn: psycopg.AsyncConnection[Any],
    sql: Query,
    params: Params | None,
    timeout: float | None,  # noqa: ASYNC109
    pool: str | None = None,
) -> QueryResult:
    if timeout is None:
        return await _run_query(conn, sql, params)
    try:
        with trio.fail_after(timeout):
            return await _run_query(conn, sql, params)
    except trio.TooSlowError:
        where = f" on pool {pool!r}" if pool else ""
        raise QueryTimeout(
            f"query{where} did not finish within {timeout:g} s and was cancelled", pool
        ) from None


def stats(pool: str | Pool) -> PoolStats:
    """A snapshot of the pool's sizes and counters (no I/O, no message)."""
    return _core(pool).stats()


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
    core = _core(pool)
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


class Lease:
    """A checked-out connection, for code that cannot use ``async with``.

    Get one with :func:`acquire` and give it back with :meth:`release`
    exactly once (in a ``finally``).  A lease whose task ends without
    releasing it is reclaimed by the manager's leak sweep, and its
    connection replaced (its state is unknown); prefer :func:`connection`.
    """

    __slots__ = ("_core", "_slot")

    def __init__(self, core: PoolCore, slot: Slot) -> None:
        self._core = core
        self._slot: Slot | None = slot

    @property
    def connection(self) -> TrioConnection[TupleRow]:
        """The leased connection.

        Raises:
            PoolError: the lease was released.
        """
        slot = self._slot
        if slot is None or slot.conn is None:
            raise PoolError("this lease was released", self._core.name)
        return slot.conn

    async def release(self) -> None:
        """Return the connection to the pool (no-op when already released)."""
        slot = self._slot
        if slot is not None:
            self._slot = None
            await _checkin(self._core, slot)


async def acquire(pool: str | Pool, *, timeout: float | None = None) -> Lease:  # noqa: ASYNC109
    """Check out a connection until :meth:`Lease.release` (low-level; prefer :func:`connection`)."""
    check_seconds(timeout, "acquire(timeout)", optional=True)
    core = _core(pool)
    return Lease(core, await core.checkout(timeout))


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
