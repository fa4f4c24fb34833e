"""Errors of the connection pools.

Every error a pool raises on purpose is a :class:`PoolError`, itself a
:class:`~otpy.pg.errors.PgConnectorError`, so ``except PgConnectorError``
still catches everything the connector raises.  Each message names the pool
and the numbers an operator needs to act (size, callers waiting, the
configured limit), and never a password: connection errors are described by
host, port and reason only (see :class:`~otpy.pg.errors.ConnectError`).

Errors from the server while a query runs (syntax errors, constraint
violations, a backend terminated under a caller) are *not* wrapped: they
reach the caller as the psycopg exceptions that code written for psycopg
already handles.
"""

from __future__ import annotations

import psycopg

from otpy._moved import moved_names
from otpy.pg.errors import PgConnectorError

__all__ = [
    "PoolClosed",
    "PoolError",
    "PoolNotFound",
    "PoolOverloaded",
    "PoolTimeout",
    "PoolUnavailable",
    "QueryTimeout",
]


class PoolError(PgConnectorError):
    """Base class of the errors raised by :mod:`otpy.pg.pool`.

    ``pool`` is the name of the pool concerned (``None`` when not known).
    """

    pool: str | None

    def __init__(self, message: str, pool: str | None = None) -> None:
        super().__init__(message)
        self.pool = pool


class PoolNotFound(PoolError, LookupError):
    """No pool is running under this name in the current registry.

    The pool was never started, has stopped, or lives in another registry
    (``otpy.use_registry``).  Start it with :func:`otpy.pg.pool.open_pool` or put
    :func:`otpy.pg.pool.pool_spec` under a supervisor first.
    """


class PoolClosed(PoolError):
    """The pool stopped (or its manager restarted) while the caller was using or waiting for it.

    Retrying is reasonable when the pool is supervised: a restarted manager
    registers the name again.
    """


class PoolTimeout(PoolError, TimeoutError):
    """No connection became free within the checkout timeout.

    epg_connector answered ``{error, overload}``; here the exception carries
    the numbers: ``timeout`` (seconds waited), ``size`` (connections the pool
    held) and ``waiting`` (callers still queued).  Either the pool is too
    small for the load or connections are held too long (look at ``in_use``
    in :func:`otpy.pg.pool.stats`).
    """

    timeout: float
    size: int
    waiting: int

    def __init__(self, message: str, pool: str, timeout: float, size: int, waiting: int) -> None:
        super().__init__(message, pool)
        self.timeout = timeout
        self.size = size
        self.waiting = waiting


class PoolOverloaded(PoolError):
    """The checkout was refused at once: ``max_waiting`` callers already wait.

    Shedding load early is better than queueing callers who would all time
    out; raise ``max_waiting`` only if the load is legitimately bursty.
    ``waiting`` is the queue length and ``max_waiting`` the configured cap.
    """

    waiting: int
    max_waiting: int

    def __init__(self, message: str, pool: str, waiting: int, max_waiting: int) -> None:
        super().__init__(message, pool)
        self.waiting = waiting
        self.max_waiting = max_waiting


class PoolUnavailable(PoolError, psycopg.OperationalError):
    """The pool has no connection and its last attempt to open one failed.

    Raised at once instead of letting callers sit out the checkout timeout
    while the server is unreachable; ``last_error`` describes that attempt
    (host, port, reason; never a password).  Also a
    :class:`psycopg.OperationalError`, which code written for psycopg already
    treats as "the server cannot be reached".  The pool keeps reconnecting
    with back-off and serves callers again as soon as a connection opens.
    """

    last_error: str

    def __init__(self, message: str, pool: str, last_error: str) -> None:
        super().__init__(message, pool)
        self.last_error = last_error


class QueryTimeout(PoolError, TimeoutError):
    """A :func:`otpy.pg.pool.query` with ``timeout=`` took longer than that.

    The query was cancelled on the server (the connection stays usable) and
    the connection went back to the pool.
    """


# One spelling per name: ``TooManyWaiters`` was an alias of PoolOverloaded.
__getattr__ = moved_names(__name__, {"TooManyWaiters": "otpy.pg.pool.errors:PoolOverloaded"})
