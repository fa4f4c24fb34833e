"""The WAL reader: stream a logical replication slot into a behaviour class.

The Python counterpart of epg_connector's ``epg_wal_reader``::

    class UserReplicationHandler(wal_reader.ReplicationHandler):
        async def handle_replication_data(self, ref, changes):
            for change in changes:
                match change:
                    case Change("users", "insert", row, None): ...

        async def handle_replication_stop(self, ref, slot_name): ...

    ref = await wal_reader.subscribe(UserReplicationHandler(), db_opts, "myapp_slot",
                                     ["user_changes"], {"slot_type": "persistent"})
    ...
    await wal_reader.unsubscribe(ref)

``subscribe`` returns once the reader is connected, has its slot and
START_REPLICATION was accepted; otherwise it raises the specific error
(:class:`SlotInUse`, :class:`PublicationMissing`, :class:`InvalidName`,
:class:`InvalidHandler`, :class:`ReaderStartTimeout`, a connection error...).  The
reader is a :class:`WalReader` actor under the WAL readers'
:class:`~otpy.DynamicSupervisor` (include :func:`readers_supervisor_spec` in
your supervision tree, or pass ``supervisor=``).  When it crashes (server
gone, walsender terminated, handler raised) it calls ``handle_replication_stop``
and is restarted with exponential backoff; on a persistent slot it resumes
right after the last transaction the handler returned from.

Some ends are *terminal* (:class:`ChangesLost`): the persistent slot it was
reading disappeared (:class:`SlotLost`; otpy creates a missing slot only on
the first start of a subscription, never behind a reader's back) or
PostgreSQL invalidated it (:class:`SlotInvalidated`).  Restarting cannot
bring those changes back, so the reader exits with a ``shutdown`` reason
carrying the error (its TRANSIENT spec is not restarted), calls
``handle_replication_stop`` once with the error on ``ref.error``, and the
subscription ends (:meth:`Subscription.wait_stopped`).

Delivery contract (see ``docs/replication.md``):

* a transaction is acknowledged only after ``handle_replication_data``
  returned for it (for its final chunk, when chunked); a raising handler
  acknowledges nothing and gets the transaction again after the restart;
* unless ``on_failure`` gives up on a transaction after ``max_attempts``:
  ``stop`` ends the subscription (:class:`HandlerFailed`, terminal like
  :class:`ChangesLost`), ``park`` writes it to a dead-letter table
  (:mod:`otpy.pg.wal_reader.dead_letters`) and acknowledges it;
* with ``ack="manual"``, ``ref.ack(commit_lsn)`` takes the place of returning:
  the server is told the end of the longest acknowledged prefix
  (:class:`~otpy.pg.replication.acks.AckTracker`);
* persistent slot: at-least-once across crashes of the handler, the reader,
  the process, the walsender and PostgreSQL itself; duplicates only from the
  unacknowledged tail, never a gap, never out of order;
* temporary slot: the slot dies with the session, so changes committed while
  the reader is disconnected (between a crash and its restart) are not replayed.

The package holds the reader and everything it does on its connections
(:mod:`otpy.pg.replication` holds the pure decoding it relies on):

* :mod:`.reader` -- :class:`WalReader`, its lifecycle (:class:`ReaderPhase`),
  :func:`subscribe` and :func:`unsubscribe`;
* :mod:`.subscription` -- :class:`Subscription`, its shared
  :class:`ReaderState`, and this process's table of subscriptions;
* :mod:`.stream` -- the replication session: connect, slot, START_REPLICATION,
  the socket and status loops;
* :mod:`.slots` -- slot and publication names and catalog queries;
* :mod:`.typefetch` -- user types fetched for the value decoder;
* :mod:`.watch` -- the slot's WAL retention and the status interval;
* :mod:`.snapshot` -- the initial snapshot and backfills;
* :mod:`.dead_letters` -- the dead-letter table of ``on_failure="park"``;
* :mod:`.metrics` -- positions, lag and counters of a subscription.
"""

from otpy.pg.replication.changes import Change, ChangeBatch
from otpy.pg.replication.errors import (
    AlreadySubscribed,
    ChangesLost,
    HandlerFailed,
    InvalidHandler,
    InvalidName,
    InvalidOptions,
    PublicationMissing,
    ReaderStartTimeout,
    ReplicationError,
    SlotInUse,
    SlotInvalidated,
    SlotLost,
    SlotMismatch,
    StreamEnded,
)
from otpy.pg.replication.handler import HandlesReplication, ReplicationHandler
from otpy.pg.replication.options import ReaderOptions
from otpy.pg.replication.pgoutput import UNCHANGED_TOAST

from .reader import (
    CONNECTOR_APP,
    READERS_SUPERVISOR,
    ReaderPhase,
    WalReader,
    readers_supervisor_spec,
    resolve_database,
    subscribe,
    unsubscribe,
)
from .snapshot import backfill
from .subscription import ReaderState, Subscription, subscriptions

__all__ = [
    "CONNECTOR_APP",
    "READERS_SUPERVISOR",
    "UNCHANGED_TOAST",
    "AlreadySubscribed",
    "Change",
    "ChangeBatch",
    "ChangesLost",
    "HandlerFailed",
    "HandlesReplication",
    "InvalidHandler",
    "InvalidName",
    "InvalidOptions",
    "PublicationMissing",
    "ReaderOptions",
    "ReaderPhase",
    "ReaderStartTimeout",
    "ReaderState",
    "ReplicationError",
    "ReplicationHandler",
    "SlotInUse",
    "SlotInvalidated",
    "SlotLost",
    "SlotMismatch",
    "StreamEnded",
    "Subscription",
    "WalReader",
    "backfill",
    "readers_supervisor_spec",
    "resolve_database",
    "subscribe",
    "subscriptions",
    "unsubscribe",
]
