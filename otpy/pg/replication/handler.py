"""The behaviour class a WAL reader calls: epg_wal_reader's callback module, as a class.

Subclass :class:`ReplicationHandler` and pass an instance to
:func:`otpy.pg.wal_reader.subscribe`.  The same instance serves every restart of
the reader, so it may keep state (counters, a cache) across reconnections.

A handler may also be any object with both methods as coroutine functions
(duck typing).  ``subscribe`` checks the handler with :func:`check_handler`
before starting anything: a handler that cannot receive changes must never be
subscribed, because the reader acknowledges every transaction the handler
returned from, and a missing (e.g. misspelled) ``handle_replication_data``
that silently returned would make PostgreSQL forget every change unseen.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Protocol

from .errors import InvalidHandler

if TYPE_CHECKING:
    from .changes import ChangeBatch

__all__ = ["HandlesReplication", "ReplicationHandler", "check_handler"]

_DATA = "handle_replication_data"
_STOP = "handle_replication_stop"


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

    Subclasses must implement ``handle_replication_data`` (``subscribe``
    raises :class:`~.errors.InvalidHandler` otherwise); ``handle_replication_stop``
    has a no-op default.  Both must be ``async def``: a plain ``def`` is
    refused when the class is defined.

    The reader keeps answering the server's keepalives while the handler runs,
    so a slow handler does not lose its connection.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a handler method written as plain ``def`` when the class is defined."""
        super().__init_subclass__(**kwargs)
        for name in (_DATA, _STOP):
            fn = cls.__dict__.get(name)
            if fn is not None and not inspect.iscoroutinefunction(fn):
                raise InvalidHandler(
                    f"{cls.__qualname__}.{name} must be a coroutine function (async def): "
                    f"the reader awaits it"
                )

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        """Process one committed transaction (or one chunk of it: see ``changes.final``).

        ``ref`` is the subscription handle returned by ``subscribe``.  There
        is no default: a subclass that does not override this method is
        refused by ``subscribe`` (acknowledging changes nobody saw would lose
        them); calling this one raises :class:`NotImplementedError`.
        """
        raise NotImplementedError(f"{type(self).__qualname__} does not implement {_DATA}")

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        """Called whenever the stream ends: unsubscribe, shutdown, crash or slot lost.

        After a crash the reader is restarted (and this handler called again
        with data) unless the subscription was removed.  When the stop is
        terminal (:class:`~.errors.ChangesLost`: the slot was dropped or
        invalidated) ``ref.error`` holds the error and no restart follows;
        otherwise ``ref.error`` is None.  Exceptions raised here are logged
        and ignored.  The default does nothing.
        """


class HandlesReplication(Protocol):
    """What ``subscribe`` accepts as a handler, for type checkers (duck typing).

    Every :class:`ReplicationHandler` subclass matches; so does any object
    with both methods as coroutine functions.  At run time
    :func:`check_handler` enforces it.
    """

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        """See :meth:`ReplicationHandler.handle_replication_data`."""

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        """See :meth:`ReplicationHandler.handle_replication_stop`."""


def check_handler(handler: object) -> None:
    """Refuse a handler that cannot receive changes, before anything starts.

    A :class:`ReplicationHandler` subclass must override
    ``handle_replication_data``; any other object must provide both methods.
    Every method must be a coroutine function.

    Raises:
        InvalidHandler: naming the missing or non-async method.
    """
    kind = type(handler).__qualname__
    required = (_DATA,) if isinstance(handler, ReplicationHandler) else (_DATA, _STOP)
    for name in required:
        method = getattr(handler, name, None)
        if method is None or getattr(method, "__func__", None) is getattr(ReplicationHandler, name):
            argument = "changes" if name == _DATA else "slot_name"
            raise InvalidHandler(
                f"handler {kind} does not implement {name}(self, ref, {argument}) "
                f"(misspelled?): define it as async def"
                + (
                    ""
                    if isinstance(handler, ReplicationHandler)
                    else f"; a handler that is not a ReplicationHandler subclass must define "
                    f"both {_DATA} and {_STOP}"
                )
            )
    for name in (_DATA, _STOP):
        method = getattr(handler, name, None)
        if method is not None and not inspect.iscoroutinefunction(method):
            raise InvalidHandler(
                f"handler {kind}.{name} must be a coroutine function (async def), "
                f"got {method!r}: the reader awaits it"
            )
