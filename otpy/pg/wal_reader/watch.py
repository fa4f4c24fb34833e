"""The reader's watch on the server: its slot's WAL retention, and the status interval.

Two questions a reader asks the server on its normal (non-replication)
connection, never on the hot path:

* **How close is the slot to being invalidated?**  :func:`check_slot` reads
  ``pg_replication_slots`` (``wal_status``, ``safe_wal_size``, retained WAL
  since ``restart_lsn``, and ``invalidation_reason`` on PostgreSQL 17+) and
  ``max_slot_wal_keep_size``.  The reader runs it every
  ``slot_check_interval`` seconds and warns once each time the retained WAL
  crosses :data:`RETAINED_WARNING_FRACTION` of ``max_slot_wal_keep_size``, or
  ``wal_status`` leaves ``reserved`` (Supabase Realtime's watchdog does the
  same, at the same 50 %).  After the warning, the operator has the time the
  other half of the budget takes to fill to act before PostgreSQL invalidates
  the slot and the changes are lost (:class:`~.errors.SlotInvalidated`).
* **How often must status updates go out?**  The walsender drops a client
  silent for ``wal_sender_timeout``: :func:`status_interval_for` follows it
  (a third, at most the fixed default) when the user did not set
  ``status_interval``, as Electric derives its own from the same setting.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

__all__ = [
    "DEFAULT_STATUS_INTERVAL",
    "RETAINED_WARNING_FRACTION",
    "SlotHealth",
    "check_slot",
    "status_interval_for",
]

#: Seconds between status updates when neither the user nor the server says
#: otherwise (``wal_sender_timeout`` 0 disables the server's timeout).
DEFAULT_STATUS_INTERVAL: Final = 10.0

#: Retained WAL above this fraction of ``max_slot_wal_keep_size`` is warned about.
RETAINED_WARNING_FRACTION: Final = 0.5


@attrs.frozen
class SlotHealth:
    """What the server says about one slot (see :func:`check_slot`)."""

    retained_bytes: int
    """WAL the slot keeps: current insert position minus its ``restart_lsn``."""
    wal_status: str | None
    """``reserved``, ``extended``, ``unreserved`` or ``lost`` (None if unknown)."""
    safe_wal_size: int | None
    """Bytes that can still be written before the slot is in danger (None: unlimited)."""
    max_slot_wal_keep_size: int | None
    """The server's limit in bytes (None: ``-1``, unlimited)."""
    invalidation_reason: str | None
    """Why PostgreSQL invalidated the slot (PostgreSQL 17+), else None."""

    @property
    def retained_fraction(self) -> float | None:
        """Retained WAL as a fraction of ``max_slot_wal_keep_size`` (None without a limit)."""
        if not self.max_slot_wal_keep_size:
            return None
        return self.retained_bytes / self.max_slot_wal_keep_size

    @property
    def risk(self) -> str | None:
        """``invalidated``, ``retention`` (past the warning fraction), ``wal_status``, or None."""
        if self.invalidation_reason or self.wal_status == "lost":
            return "invalidated"
        fraction = self.retained_fraction
        if fraction is not None and fraction >= RETAINED_WARNING_FRACTION:
            return "retention"
        if self.wal_status in ("unreserved", "extended") and self.max_slot_wal_keep_size:
            return "wal_status"
        return None

    def warning(self) -> str | None:
        """A sentence for the operator when the slot is at risk (see :attr:`risk`), else None."""
        risk = self.risk
        if risk == "invalidated":
            reason = self.invalidation_reason or "wal_status = lost"
            return f"the slot was invalidated ({reason}); its changes are lost"
        if risk == "retention":
            return (
                f"the slot retains {self.retained_bytes} bytes of WAL, "
                f"{self.retained_fraction:.0%} of max_slot_wal_keep_size: past 100 % "
                f"PostgreSQL invalidates it (acknowledge faster, or drop the slot)"
            )
        if risk == "wal_status":
            return f"the slot's wal_status is {self.wal_status!r}: it may be invalidated soon"
        return None


_SLOT_QUERY: Final = """
SELECT (pg_catalog.pg_current_wal_insert_lsn() - s.restart_lsn)::bigint,
       s.wal_status,
       s.safe_wal_size,
       (SELECT setting::bigint * 1024 * 1024 FROM pg_catalog.pg_settings
         WHERE name = 'max_slot_wal_keep_size'),
       {reason}
  FROM pg_catalog.pg_replication_slots s
 WHERE s.slot_name = %s
"""


async def check_slot(conn: Any, slot: str) -> SlotHealth | None:
    """Read the health of ``slot`` on ``conn`` (a normal connection); None if it is missing."""
    reason = "s.invalidation_reason" if conn.info.server_version >= 170000 else "NULL::text"
    cur = await conn.execute(_SLOT_QUERY.format(reason=reason), [slot])
    row = await cur.fetchone()
    if row is None:
        return None
    retained, status, safe, limit, why = row
    return SlotHealth(
        retained_bytes=max(0, int(retained or 0)),
        wal_status=status,
        safe_wal_size=None if safe is None else int(safe),
        max_slot_wal_keep_size=None if limit is None or limit < 0 else int(limit),
        invalidation_reason=why,
    )


async def status_interval_for(conn: Any, configured: float | None) -> float:
    """``configured``, or a third of the server's ``wal_sender_timeout`` (at most the default)."""
    if configured is not None:
        return configured
    cur = await conn.execute(
        "SELECT setting::float8 / 1000 FROM pg_catalog.pg_settings "
        "WHERE name = 'wal_sender_timeout'"
    )
    row = await cur.fetchone()
    timeout = float(row[0]) if row is not None and row[0] else 0.0
    if timeout <= 0:
        return DEFAULT_STATUS_INTERVAL
    return min(DEFAULT_STATUS_INTERVAL, timeout / 3)
