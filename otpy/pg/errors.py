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

import psycopg

__all__ = [
    "ConfigError",
    "ConnectError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "PgConnectorError",
    "PsycopgCompatibilityError",
    "ReplicationProtocolError",
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
