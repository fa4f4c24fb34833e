"""Value objects of the pools: query results and statistics."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import attrs

__all__ = ["HOLD_BUCKETS", "WAIT_BUCKETS", "PoolStats", "QueryResult"]

#: Upper bounds (seconds) of the checkout wait-time histogram in :class:`PoolStats`.
WAIT_BUCKETS: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, float("inf"))

#: Upper bounds (seconds) of the connection hold-time histogram in :class:`PoolStats`:
#: from a single fast statement to a connection kept for minutes.
HOLD_BUCKETS: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0, 60.0, float("inf"))


@attrs.frozen
class QueryResult:
    """What :func:`otpy.pg.pool.query` returns: rows, column names and row count.

    epg_connector returned ``{ok, Columns, Rows}``, ``{ok, Count}`` or
    ``{ok, Count, Columns, Rows}`` depending on the statement; one class with
    all fields serves every statement (``columns``/``rows`` are empty for a
    statement that returns no rows, e.g. an INSERT without RETURNING).
    """

    columns: tuple[str, ...]
    """Column names, in order (empty when the statement returns no rows)."""
    rows: Sequence[Any]
    """The rows, as produced by the connection's row factory (tuples by default)."""
    rowcount: int
    """Rows returned or affected (psycopg's ``cursor.rowcount``; -1 when unknown)."""
    status: str | None = None
    """The server's command tag, e.g. ``"INSERT 0 1"``."""

    def __iter__(self) -> Iterator[Any]:
        """Iterate over the rows (``for row in result``)."""
        return iter(self.rows)

    def __len__(self) -> int:
        """The number of rows returned (not ``rowcount``, which also counts affected rows)."""
        return len(self.rows)

    def scalar(self) -> Any:
        """The first column of the first row (``None`` when there is no row).

        Handy for ``SELECT count(*)`` and ``INSERT ... RETURNING id``.
        """
        return self.rows[0][0] if self.rows else None

    def dicts(self) -> list[dict[str, Any]]:
        """The rows as ``{column: value}`` dicts (the shape of an Erlang map row)."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@attrs.frozen
class PoolStats:
    """A snapshot of one pool, from :func:`otpy.pg.pool.stats`.

    Taking it costs no I/O and no message: it reads the manager's state
    directly, so it can be polled by metrics exporters as often as needed.
    Counters (``checkouts``, ``timeouts``, ...) count since the pool
    (its manager) started.
    """

    name: str
    """The pool's name."""
    min_size: int
    """Connections kept open (the configured size's lower bound)."""
    max_size: int
    """Connections allowed at most, on-demand ones included."""
    size: int
    """Connection slots: open connections plus those being (re)opened."""
    idle: int
    """Open connections ready for a caller."""
    in_use: int
    """Connections checked out by callers."""
    busy: int
    """Connections under maintenance (rollback after a dirty return, health check)."""
    connecting: int
    """Slots without a connection, being (re)opened."""
    waiting: int
    """Callers queued for a connection."""
    checkouts: int
    """Connections handed out."""
    waited_checkouts: int
    """Checkouts that had to queue (the others found an idle connection at once)."""
    wait_time_total: float
    """Seconds spent queueing, summed over the queued checkouts."""
    wait_time_max: float
    """The longest time a caller queued before getting a connection, in seconds."""
    wait_histogram: tuple[tuple[float, int], ...]
    """``(upper bound in seconds, checkouts)`` per bucket of :data:`WAIT_BUCKETS`."""
    timeouts: int
    """Checkouts that ended in :class:`~otpy.pg.pool.PoolTimeout`."""
    overloaded: int
    """Checkouts refused because ``max_waiting`` callers already waited."""
    cancelled_waits: int
    """Callers cancelled while queued."""
    unavailable: int
    """Checkouts refused with :class:`~otpy.pg.pool.PoolUnavailable`."""
    connection_errors: int
    """Failed connection attempts."""
    connections_opened: int
    """Connections opened successfully (first openings and reconnections)."""
    connections_lost: int
    """Connections found broken (closed by the server, failed health check or rollback)."""
    connections_replaced: int
    """Connections closed on purpose and reopened (max lifetime, returned busy)."""
    connections_closed_idle: int
    """On-demand connections closed after ``max_idle``."""
    rollbacks: int
    """Connections returned inside a transaction (or in error) and rolled back."""
    health_checks: int
    """Health checks run on idle connections."""
    leaked: int
    """Connections reclaimed from a task that ended without returning them."""
    down: bool
    """True while the pool has no connection and its last connection attempt failed."""
    last_error: str | None
    """The last connection error (never containing a password)."""
    hold_time_total: float = 0.0
    """Seconds connections were held by callers, summed over the check-ins (timing on)."""
    hold_histogram: tuple[tuple[float, int], ...] = ()
    """``(upper bound in seconds, check-ins)`` per bucket of :data:`HOLD_BUCKETS` (timing on)."""
    held_too_long: int = 0
    """Checkouts reported as held longer than the pool's ``hold_warning`` threshold."""

    @property
    def connections_closed(self) -> int:
        """Connections closed for any reason: lost, replaced or idle too long."""
        return self.connections_lost + self.connections_replaced + self.connections_closed_idle

    @property
    def average_wait(self) -> float:
        """Mean queueing time of the checkouts that queued, in seconds."""
        return self.wait_time_total / self.waited_checkouts if self.waited_checkouts else 0.0
