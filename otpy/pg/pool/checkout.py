"""Using a running pool: borrowing its connections, the :class:`Pool` handle, its statistics.

:func:`connection` and :func:`transaction` (``async with``), :func:`query`
(one statement) and :func:`acquire` (a :class:`Lease`, released by hand) all
do the same three things: find the pool's state (a
:class:`~otpy.pg.pool.core.PoolCore`) by name or through a :class:`Pool`
handle, take a connection (``checkpoint_if_cancelled``, then
``checkout_nowait``, queueing with ``enqueue`` only when nothing is idle),
and give it back with ``PoolCore.checkin`` (closing it when its pool is gone).

Design, and why:

* **The checkout is inlined** in each path rather than shared through
  ``PoolCore.checkout``: this is the pool's hot path, and every coroutine
  object or function layer spared is measurable (``benchmarks/pool.py``,
  ``docs/pools.md``).  The price is four copies of three lines; one
  parametrised test (``tests/pg/pool/test_checkout.py``) checks that the paths
  agree on timeouts, closed pools, dirty returns, cancellation and leaks.
* :class:`PooledConnection` is a class with ``__slots__`` rather than an
  ``asynccontextmanager`` generator, and its ``__aexit__`` a plain function
  returning a ready awaitable when the check-in is clean (no coroutine).
* Nothing here does I/O on a clean return: ``checkin`` decides locally; a
  dirty connection goes to its worker (see ``otpy.pg.pool.worker``).
* :class:`Pool` lives here, not in a module of its own: the functions accept
  a handle and the handle's methods are the functions, so apart they would
  import each other.  A pool is found by its registered name (see
  :mod:`otpy.pg.pool.manager`); the handle is a name plus a cached lookup
  that follows the pool across manager restarts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psycopg
import trio
from psycopg import sql as _sql
from psycopg.abc import Params

from otpy.pg.config import check_seconds
from otpy.pg.errors import ConfigError
from otpy.pg.pool.core import PoolCore, Slot
from otpy.pg.pool.errors import PoolError, PoolNotFound, PoolTimeout, QueryTimeout
from otpy.pg.pool.manager import lookup
from otpy.pg.pool.types import PoolStats, QueryResult

if TYPE_CHECKING:
    from psycopg.rows import TupleRow

    from otpy.pg.connection import TrioConnection

__all__ = [
    "Lease",
    "Pool",
    "PooledConnection",
    "PooledTransaction",
    "Query",
    "acquire",
    "connection",
    "core_of",
    "query",
    "stats",
    "transaction",
    "wait_ready",
]

Query = str | bytes | _sql.SQL | _sql.Composed
"""A statement: text with psycopg placeholders (``%s``), or a :mod:`psycopg.sql` composition."""


def core_of(pool: str | Pool) -> PoolCore:
    """The state of the running pool named by ``pool`` (a name or a :class:`Pool` handle).

    Raises:
        PoolNotFound: no pool of that name runs.
        TypeError: ``pool`` is neither a name nor a handle.
    """
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
        core = self._core = lookup(pool) if type(pool) is str else core_of(pool)
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
    core = lookup(pool) if type(pool) is str else core_of(pool)
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
    core = core_of(pool)
    return Lease(core, await core.checkout(timeout))


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
