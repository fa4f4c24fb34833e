"""The behaviour class a WAL reader calls: epg_wal_reader's callback module, as a class.

Subclass :class:`ReplicationHandler` and pass an instance to
:func:`otpy.pg.wal_reader.subscribe`.  The same instance serves every restart of
the reader, so it may keep state (counters, a cache) across reconnections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .changes import ChangeBatch

__all__ = ["ReplicationHandler"]


class ReplicationHandler:
    """Receives the committed transactions of a replication slot.

    ``handle_replication_data`` is awaited once per transaction (or per chunk of
    a transaction larger than ``max_batch_size``, see
    :class:`~otpy.pg.replication.changes.ChangeBatch`), one call at a time, in
    commit order; a transaction with no change to deliver (e.g. all its
    streamed subtransactions aborted) is acknowledged without a call.
    *Returning* is the acknowledgement: only then may PostgreSQL
    forget the transaction.  *Raising* (any exception) acknowledges nothing:
    the reader stops, calls ``handle_replication_stop``, is restarted by its
    supervisor with backoff and, on a persistent slot, the same transaction is
    delivered again.  So make the handler idempotent (duplicates come only
    from the unacknowledged tail, never out of order, never with a gap).

    The reader keeps answering the server's keepalives while the handler runs,
    so a slow handler does not lose its connection.
    """

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        """Process one committed transaction (or one chunk of it: see ``changes.final``).

        ``ref`` is the subscription handle returned by ``subscribe``.  The
        default does nothing (acknowledges everything).
        """

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        """Called whenever the stream ends: unsubscribe, shutdown, crash or slot dropped.

        After a crash the reader is restarted (and this handler called again
        with data) unless the subscription was removed.  Exceptions raised here
        are logged and ignored.  The default does nothing.
        """
