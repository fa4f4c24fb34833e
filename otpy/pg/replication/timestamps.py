"""PostgreSQL timestamps on the replication protocol <-> aware UTC datetimes.

The walsender and pgoutput send times (commit, prepare, keepalive send time)
as signed 64-bit microseconds since 2000-01-01 00:00 UTC.  These helpers turn
them into timezone-aware ``datetime`` objects in UTC (naive datetimes are a
classic source of off-by-hours bugs: the original turned them into naive UTC)
and back, for the standby status update the client sends.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

__all__ = [
    "PG_EPOCH",
    "datetime_to_pg_timestamp",
    "now_pg_timestamp",
    "pg_timestamp_to_datetime",
]

#: 2000-01-01 00:00:00 UTC, the origin of PostgreSQL's timestamps.
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# Seconds between the Unix epoch and PG_EPOCH.
_UNIX_TO_PG_US = 946_684_800 * 1_000_000


def pg_timestamp_to_datetime(microseconds: int) -> datetime:
    """Return the aware UTC datetime of a PostgreSQL protocol timestamp.

    Raises:
        OverflowError: when the value is outside ``datetime``'s range (years
            1-9999); only corrupt input does that, and the decoders turn it into
            a :class:`~.errors.DecodeError`.
    """
    return PG_EPOCH + timedelta(0, 0, microseconds)  # positional: 0.29 against 0.43 µs


def datetime_to_pg_timestamp(moment: datetime) -> int:
    """Return the PostgreSQL protocol timestamp of an aware datetime.

    Raises:
        ValueError: for a naive datetime, whose instant is ambiguous.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a naive datetime has no defined instant: pass an aware datetime")
    delta = moment - PG_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def now_pg_timestamp() -> int:
    """The current time as a PostgreSQL protocol timestamp (for status updates)."""
    return time.time_ns() // 1000 - _UNIX_TO_PG_US
