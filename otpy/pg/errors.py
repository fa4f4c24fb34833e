"""Exception classes of the connector's connection and configuration layers.

Every error raised on purpose by :mod:`otpy.pg.connection` and
:mod:`otpy.pg.config` is a :class:`PgConnectorError`, so callers can catch
the connector's own failures in one place.  Errors about a database connection
also derive from :class:`psycopg.OperationalError`, because code written for
psycopg already catches that for "the server cannot be reached" situations and
should keep working unchanged on trio.

None of these messages ever contains a password: they are built from the host,
port and resolved address of an attempt only (see :class:`ConnectError`).
Later layers (pool, replication) define their own errors in their own modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import psycopg
import trio

__all__ = [
    "ConfigError",
    "ConnectError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "PgConnectorError",
    "PsycopgCompatibilityError",
    "ReplicationProtocolError",
    "raise_single_exception",
]


class PgConnectorError(Exception):
    """Base class of the errors raised by the PostgreSQL connector."""


class PsycopgCompatibilityError(PgConnectorError, ImportError):
    """The installed psycopg lacks the internals :mod:`otpy.pg.connection` relies on.

    The trio connection drives psycopg's semi-private generator protocol; when
    a psycopg release changes it, failing at import with the missing names is
    far better than misbehaving at run time.
    """


class ConnectError(PgConnectorError, psycopg.OperationalError):
    """No connection could be established to any of the configured hosts.

    ``attempts`` lists, per attempt, a description (host, port, resolved
    address; never the password) and why it failed, so multi-host failures can
    be diagnosed from the single exception.
    """

    attempts: tuple[tuple[str, str], ...]

    def __init__(self, message: str, attempts: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.attempts = tuple(attempts)


class ConnectTimeoutError(ConnectError):
    """Every connection attempt ran out of its ``connect_timeout``."""


class ConnectionClosedError(PgConnectorError, psycopg.OperationalError):
    """The connection was closed (by this process or by the server) while in use.

    Raised, for instance, in a task waiting for a query result when another task
    closes the connection, or by the replication helpers when the server ends the
    session.  The connection cannot be used again: open a new one.
    """


class ReplicationProtocolError(PgConnectorError, psycopg.OperationalError):
    """A replication-mode (COPY_BOTH) helper was used in the wrong protocol state.

    For example, waiting for copy data on a connection that never started
    ``START_REPLICATION``, or a ``START_REPLICATION`` that the server did not
    answer with a COPY_BOTH response.
    """


class ConfigError(PgConnectorError, ValueError):
    """The connector configuration is invalid.

    ``path`` is the dotted location of the offending key (for example
    ``"pools.main_pool.database"``, or ``"open_pool(timeout)"`` for an
    argument) and the message always names it, together with the bad value
    (passwords excepted) and what would be accepted.  Raised where the value
    enters: by the loaders, by :class:`~otpy.pg.config.PoolConfig` and
    :class:`~otpy.pg.config.DatabaseConfig` built in code, by
    :func:`~otpy.pg.pool.open_pool` and the pool API for their arguments, and
    for what libpq would only refuse when connecting (a missing certificate or
    password file, an unknown service).  What to do: fix the named key or
    argument; for a file, create it or correct the path.
    """

    path: str

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


def raise_single_exception(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise the one exception a nursery wrapped in ``group``; else ``group`` itself.

    trio's nurseries always wrap what escapes them in an exception group, so
    a context manager built on a nursery (:func:`otpy.pg.pool.open_pool`)
    would hand its caller ``ExceptionGroup([DivisionByZero(...)])`` for the
    caller's own ``DivisionByZero``, and ``except psycopg.errors.DivisionByZero``
    around the block would not catch it.  Called in ``except BaseExceptionGroup``
    around the nursery, this raises the single exception that is not a
    cancellation (with its own traceback, cause and context intact); a
    group made only of cancellations re-raises one :class:`trio.Cancelled`,
    so cancellation keeps working; anything else (two real failures) stays
    a group, as nothing would be right to drop.

    (The runtime has the same need; fold the two when it grows a shared helper.)
    """
    cancelled, rest = group.split(trio.Cancelled)
    leaves = _leaves(rest) if rest is not None else _leaves(cancelled)
    if rest is not None and len(leaves) != 1:
        raise group
    leaf = leaves[0]
    context, cause, suppress = leaf.__context__, leaf.__cause__, leaf.__suppress_context__
    try:
        raise leaf
    finally:
        leaf.__context__, leaf.__cause__ = context, cause
        leaf.__suppress_context__ = suppress
        del leaf


def _leaves(group: BaseExceptionGroup[BaseException] | None) -> list[BaseException]:
    if group is None:
        return []
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
