"""Row changes as values, and the assembly of pgoutput messages into transactions.

:class:`Change` is the Python form of epg_connector's ``{Table, Op, Data,
OldData}`` tuple, so handlers ported from Erlang read the same::

    match change:
        case Change("users", "insert", row, None): ...
        case Change("users", "update", row, old): ...

:class:`TransactionAssembler` turns the decoded pgoutput stream into
:class:`ChangeBatch` lists, in commit order, each one either a whole
transaction or, for transactions larger than ``max_batch_size``, one chunk of
it (``batch.final`` tells which).  It is pure (no I/O), so the delivery rules
can be tested without a server; the reader feeds it and acknowledges a
transaction's ``end_lsn`` only after the handler returned from its final chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

import attrs

from .lsn import LSN
from .pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    Commit,
    CommitPrepared,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputMessage,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
)
from .values import ValueDecoder

__all__ = ["OPS", "Change", "ChangeBatch", "TransactionAssembler"]

_ZERO = LSN(0)
# Returned by feed() when nothing is ready; never mutated by callers.
_NOTHING: list[ChangeBatch] = []

#: The values of :attr:`Change.op`.
OPS = (
    "insert",
    "update",
    "delete",
    "truncate",
    "message",
    "prepare",
    "commit_prepared",
    "rollback_prepared",
)


@attrs.frozen(slots=True)
class Change:
    """One change of a committed transaction (or a logical decoding message).

    The first four fields are the Erlang tuple and are what positional patterns
    match: ``case Change(table, op, data, old)``.

    * ``insert``: ``data`` is the new row, ``old`` None.
    * ``update``: ``data`` is the new row; ``old`` is the whole old row under
      REPLICA IDENTITY FULL, the old key columns when the key changed under
      DEFAULT / USING INDEX (other columns None), else None.  A TOASTed column
      the update did not change is not sent by PostgreSQL: it is filled from
      ``old`` when ``old`` has it, otherwise it is the
      :data:`~otpy.pg.replication.UNCHANGED_TOAST` sentinel, never None.
    * ``delete``: ``data`` is the deleted row as PostgreSQL sends it (the whole
      row under FULL, else the key columns with the others None); ``old`` None.
    * ``truncate``: one change per truncated table; ``data`` and ``old`` None,
      ``detail`` has ``cascade`` and ``restart_identity``.
    * ``message``: a ``pg_logical_emit_message`` (option ``messages``):
      ``table`` is the prefix, ``data`` the content (bytes), ``detail`` has
      ``transactional``.
    * ``prepare``, ``commit_prepared``, ``rollback_prepared`` (option
      ``two_phase`` only): ``data`` is the transaction's GID, ``table`` ``""``.
      ``prepare`` ends the changes of a prepared transaction; the outcome
      arrives later in a batch of its own (docs/replication.md, Two-phase).

    Attributes:
        table: the table's name (a message's prefix).
        op: what happened, one of :data:`OPS`.
        data: the row, or a message's content, as above.
        old: the old row or key columns, as above.
        schema: the table's schema (``""`` for messages).
        lsn: WAL position of this change.
        commit_lsn: LSN of the commit record of its transaction.
        xid: transaction id (None for non-transactional messages).
        commit_time: commit timestamp (aware UTC); None for non-transactional messages.
    """

    __match_args__: ClassVar[tuple[str, ...]] = ("table", "op", "data", "old")

    table: str
    op: str
    data: Any
    old: dict[str, Any] | None
    schema: str = ""
    lsn: LSN = _ZERO
    commit_lsn: LSN = _ZERO
    xid: int | None = None
    commit_time: datetime | None = None
    detail: Mapping[str, Any] | None = None


# attrs' frozen __init__ sets each of Change's ten fields with object.__setattr__
# (0.5 us a change); the per-row paths fill the slots through their member
# descriptors instead (0.4 us): the same object, as pgoutput's builders do for
# its messages.
_new = object.__new__
_SET = [Change.__dict__[field.name].__set__ for field in attrs.fields(Change)]
(
    _set_table,
    _set_op,
    _set_data,
    _set_old,
    _set_schema,
    _set_lsn,
    _set_commit_lsn,
    _set_xid,
    _set_commit_time,
    _set_detail,
) = _SET


def make_change(
    table: str,
    op: str,
    data: dict[str, Any],
    schema: str,
    lsn: LSN = _ZERO,
    commit_lsn: LSN = _ZERO,
    xid: int | None = None,
    commit_time: datetime | None = None,
) -> Change:
    """``Change(table, op, data, None, schema, lsn, ...)``, built for speed.

    For the paths that build one per row: the reader's inserts and
    :mod:`otpy.pg.wal_reader.snapshot` (a million-row table, a million
    calls).  Filled through the slot descriptors, 0.4 µs instead of attrs'
    frozen ``__init__`` at 0.55 µs; the same object the constructor makes
    (``tests/pg/replication/test_changes.py``).
    """
    change: Change = _new(Change)
    _set_table(change, table)
    _set_op(change, op)
    _set_data(change, data)
    _set_old(change, None)
    _set_schema(change, schema)
    _set_lsn(change, lsn)
    _set_commit_lsn(change, commit_lsn)
    _set_xid(change, xid)
    _set_commit_time(change, commit_time)
    _set_detail(change, None)
    return change


class ChangeBatch(list[Change]):
    """The ``changes`` handed to ``handle_replication_data``: a list with metadata.

    A plain list of :class:`Change` in commit order, so ``for change in
    changes`` works as in Erlang.  For a transaction of at most
    ``max_batch_size`` changes it is the whole transaction (``final`` True,
    ``chunk`` 0).  A larger one arrives as several batches with ``chunk`` 0, 1,
    2...; only the last has ``final`` True.  The transaction is acknowledged
    after the handler returns from its final batch: if anything fails before,
    the *whole* transaction is delivered again from chunk 0.

    ``origin`` is the name of the replication origin the source transaction
    was written under (pgoutput's Origin message: e.g. by a subscription or by
    :class:`otpy.pg.exactly_once.ExactlyOnce`), or None for a local write;
    a handler that applies changes back to where they came from skips
    batches with an origin to avoid loops (see ``docs/delivery.md``).
    """

    __slots__ = ("chunk", "commit_lsn", "commit_time", "end_lsn", "final", "origin", "xid")

    def __init__(
        self,
        changes: list[Change],
        *,
        final: bool,
        chunk: int,
        xid: int | None,
        commit_lsn: LSN,
        end_lsn: LSN,
        commit_time: datetime | None,
        origin: str | None = None,
    ) -> None:
        super().__init__(changes)
        self.final = final
        self.chunk = chunk
        self.xid = xid
        self.commit_lsn = commit_lsn
        self.end_lsn = end_lsn
        self.commit_time = commit_time
        self.origin = origin

    def __repr__(self) -> str:
        return (
            f"<ChangeBatch xid={self.xid} chunk={self.chunk} final={self.final} "
            f"end_lsn={self.end_lsn} {list.__repr__(self)}>"
        )


@attrs.define
class _Txn:
    xid: int | None
    commit_lsn: LSN
    commit_time: datetime | None
    changes: list[Change] = attrs.Factory(list)
    chunk: int = 0
    origin: str | None = None


def _fill_toast(new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    if old is None:
        return new
    for name, value in new.items():
        if value is UNCHANGED_TOAST:
            previous = old.get(name, UNCHANGED_TOAST)
            if previous is not UNCHANGED_TOAST:
                new[name] = previous
    return new


class TransactionAssembler:
    """Builds :class:`ChangeBatch` values from decoded pgoutput messages.

    Feed every message with :meth:`feed` together with the LSN of its
    XLogData; it returns the batches that became ready (usually none, one at a
    commit, or a chunk when a transaction reaches ``max_batch_size``).
    Relation and Type messages go to the :class:`ValueDecoder`.  Streamed
    transactions (``streaming`` on, protocol >= 2) are kept per xid until
    Stream Commit (aborted subtransactions are dropped), then delivered like
    any other; they are the only case where a transaction is held in memory
    whole.
    """

    def __init__(self, decoder: ValueDecoder, max_batch_size: int | None = None) -> None:
        self.decoder = decoder
        self.max_batch_size = max_batch_size
        self._txn: _Txn | None = None
        # Streamed transactions: top xid -> [(sub xid, change-without-commit-info)].
        self._streams: dict[int, list[tuple[int | None, Change]]] = {}
        self._stream_xid: int | None = None
        # Relation OID -> (table, schema), for the hot path.
        self._names: dict[int, tuple[str, str]] = {}
        # Streamed transactions: top xid -> the origin its first Stream Start announced.
        self._stream_origins: dict[int, str] = {}

    def _relation_names(self, oid: int) -> tuple[str, str]:
        relation = self.decoder.relation(oid)
        names = (relation.name, relation.namespace or "pg_catalog")
        self._names[oid] = names
        return names

    @property
    def idle(self) -> bool:
        """True outside any transaction (nothing received that is not yet in a batch)."""
        return self._txn is None and not self._streams

    def reset(self) -> None:
        """Forget partial transactions (after the stream restarted)."""
        self._txn = None
        self._streams.clear()
        self._stream_origins.clear()
        self._stream_xid = None

    # ------------------------------------------------------------------ feeding

    def feed(self, lsn: LSN, msg: PgOutputMessage) -> list[ChangeBatch]:
        """Consume one message; return the batches ready for delivery, in order."""
        kind = type(msg)
        if kind is Insert:
            # The hot path (bulk inserts): no streaming, inside Begin/Commit.
            txn = self._txn
            if txn is not None and self._stream_xid is None:
                assert isinstance(msg, Insert)
                oid = msg.relation_oid
                names = self._names.get(oid)
                if names is None:
                    names = self._relation_names(oid)
                change = make_change(
                    names[0],
                    "insert",
                    self.decoder.decode(oid, msg.new),
                    names[1],
                    lsn,
                    txn.commit_lsn,
                    txn.xid,
                    txn.commit_time,
                )
                changes = txn.changes  # self._append, inlined on this path
                limit = self.max_batch_size
                if limit is not None and len(changes) >= limit:
                    return self._append(txn, change)
                changes.append(change)
                return _NOTHING
        if kind is Insert or kind is Update or kind is Delete:
            return self._row(lsn, msg)  # type: ignore[arg-type]
        if kind is Begin:
            assert isinstance(msg, Begin)
            self._txn = _Txn(msg.xid, msg.final_lsn, msg.commit_time)
            return []
        if kind is Commit:
            assert isinstance(msg, Commit)
            txn = self._txn
            self._txn = None
            if txn is None:
                txn = _Txn(None, msg.commit_lsn, msg.commit_time)
            return [self._batch(txn, txn.changes, final=True, end_lsn=msg.end_lsn)]
        if kind is Relation:
            assert isinstance(msg, Relation)
            self.decoder.add_relation(msg)
            self._names.pop(msg.oid, None)
            return []
        if kind is Type:
            assert isinstance(msg, Type)
            self.decoder.add_type(msg)
            return []
        if kind is Truncate:
            assert isinstance(msg, Truncate)
            return self._truncate(lsn, msg)
        if kind is Message:
            assert isinstance(msg, Message)
            return self._message(lsn, msg)
        if kind is StreamStart:
            assert isinstance(msg, StreamStart)
            self._stream_xid = msg.xid
            self._streams.setdefault(msg.xid, [])
            return []
        if kind is StreamStop:
            self._stream_xid = None
            return []
        if kind is StreamAbort:
            assert isinstance(msg, StreamAbort)
            if msg.subxid == msg.xid:
                self._streams.pop(msg.xid, None)
                self._stream_origins.pop(msg.xid, None)
            elif msg.xid in self._streams:
                self._streams[msg.xid] = [
                    (sub, ch) for sub, ch in self._streams[msg.xid] if sub != msg.subxid
                ]
            return []
        if kind is StreamCommit:
            assert isinstance(msg, StreamCommit)
            return self._stream_commit(msg)
        if kind is BeginPrepare or kind is Prepare or kind is StreamPrepare:
            return self._prepare(msg)  # type: ignore[arg-type]
        if kind is CommitPrepared or kind is RollbackPrepared:
            return [_finish_prepared(msg)]  # type: ignore[arg-type]
        if kind is Origin:
            # Sent after Begin (or the first Stream Start) of a transaction that a
            # replication origin wrote: the batches carry its name (loop prevention).
            assert isinstance(msg, Origin)
            if self._stream_xid is not None:
                self._stream_origins[self._stream_xid] = msg.name
            elif self._txn is not None:
                self._txn.origin = msg.name
            return []
        return []

    def _prepare(self, msg: BeginPrepare | Prepare | StreamPrepare) -> list[ChangeBatch]:
        """Two-phase (option ``two_phase``): a prepared transaction is delivered at PREPARE.

        Its changes arrive like a transaction's, the final batch ending with a
        ``"prepare"`` change (``data`` = the GID), acknowledged at the
        prepare's end; :func:`_finish_prepared` delivers the later outcome.
        """
        if isinstance(msg, BeginPrepare):
            self._txn = _Txn(msg.xid, msg.prepare_lsn, msg.prepare_time)
            return []
        marker = Change(
            "",
            "prepare",
            msg.gid,
            None,
            "",
            msg.prepare_lsn,
            msg.prepare_lsn,
            msg.xid,
            msg.prepare_time,
            {"gid": msg.gid},
        )
        if isinstance(msg, StreamPrepare):
            self._streams.setdefault(msg.xid, []).append((None, marker))
            commit = StreamCommit(
                msg.xid, msg.flags, msg.prepare_lsn, msg.end_lsn, msg.prepare_time
            )
            return self._stream_commit(commit)
        txn = self._txn or _Txn(msg.xid, msg.prepare_lsn, msg.prepare_time)
        self._txn = None
        out = [*self._append(txn, marker)]
        out.append(self._batch(txn, txn.changes, final=True, end_lsn=msg.end_lsn))
        return out

    # ------------------------------------------------------------------ helpers

    def _add(self, change: Change, sub_xid: int | None) -> list[ChangeBatch]:
        if self._stream_xid is not None:
            self._streams[self._stream_xid].append((sub_xid, change))
            return []
        txn = self._txn
        if txn is None:  # a change outside Begin/Commit: cannot happen with pgoutput
            txn = self._txn = _Txn(None, _ZERO, None)
        return self._append(txn, change)

    def _append(self, txn: _Txn, change: Change) -> list[ChangeBatch]:
        """Add ``change`` to the open transaction; return the chunk it completed, if any.

        A full chunk goes out only when one more change arrives, so that the
        final batch (at Commit) is never empty and a transaction of exactly
        max_batch_size changes arrives whole.
        """
        changes = txn.changes
        limit = self.max_batch_size
        if limit is not None and len(changes) >= limit:
            txn.changes = [change]
            return [self._batch(txn, changes, final=False, end_lsn=_ZERO)]
        changes.append(change)
        return _NOTHING

    def _context(self, xid: int | None) -> tuple[LSN, int | None, datetime | None]:
        """(commit LSN, xid, commit time) of a change; ``xid`` is the message's own (streamed only).

        Streamed changes get their commit information at Stream Commit.
        """
        txn = self._txn
        if txn is None or self._stream_xid is not None:
            return _ZERO, xid, None
        return txn.commit_lsn, txn.xid if xid is None else xid, txn.commit_time

    def _batch(self, txn: _Txn, changes: list[Change], *, final: bool, end_lsn: LSN) -> ChangeBatch:
        batch = ChangeBatch(
            changes,
            final=final,
            chunk=txn.chunk,
            xid=txn.xid,
            commit_lsn=txn.commit_lsn,
            end_lsn=end_lsn,
            commit_time=txn.commit_time,
            origin=txn.origin,
        )
        txn.chunk += 1
        return batch

    def _row(self, lsn: LSN, msg: Insert | Update | Delete) -> list[ChangeBatch]:
        decoder = self.decoder
        relation = decoder.relation(msg.relation_oid)
        commit_lsn, xid, commit_time = self._context(msg.xid)
        if type(msg) is Insert:
            data = decoder.decode(msg.relation_oid, msg.new)
            op, old = "insert", None
        elif type(msg) is Update:
            assert isinstance(msg, Update)
            source = msg.old if msg.old is not None else msg.key
            old = decoder.decode(msg.relation_oid, source) if source is not None else None
            data = decoder.decode(msg.relation_oid, msg.new)
            if msg.key is not None and old is not None:
                # K tuples carry the key columns only; the others arrive as nulls.
                keys = {c.name for c in relation.columns if c.is_key}
                old = {k: v for k, v in old.items() if k in keys}
            data = _fill_toast(data, old)
            op = "update"
        else:
            assert isinstance(msg, Delete)
            source = msg.old if msg.old is not None else msg.key
            assert source is not None
            data = decoder.decode(msg.relation_oid, source)
            op, old = "delete", None
        change = Change(
            relation.name,
            op,
            data,
            old,
            relation.namespace or "pg_catalog",
            lsn,
            commit_lsn,
            xid,
            commit_time,
        )
        return self._add(change, msg.xid)

    def _truncate(self, lsn: LSN, msg: Truncate) -> list[ChangeBatch]:
        out: list[ChangeBatch] = []
        commit_lsn, xid, commit_time = self._context(msg.xid)
        detail = {"cascade": msg.cascade, "restart_identity": msg.restart_identity}
        for oid in msg.relation_oids:
            relation = self.decoder.relation(oid)
            change = Change(
                relation.name,
                "truncate",
                None,
                None,
                relation.namespace or "pg_catalog",
                lsn,
                commit_lsn,
                xid,
                commit_time,
                detail,
            )
            out += self._add(change, msg.xid)
        return out

    def _message(self, lsn: LSN, msg: Message) -> list[ChangeBatch]:
        detail = {"transactional": msg.transactional}
        if not msg.transactional:
            # Delivered at once, outside any transaction, acknowledged at its own LSN.
            change = Change(msg.prefix, "message", msg.content, None, "", msg.lsn, detail=detail)
            return [
                ChangeBatch(
                    [change],
                    final=True,
                    chunk=0,
                    xid=None,
                    commit_lsn=msg.lsn,
                    end_lsn=msg.lsn,
                    commit_time=None,
                )
            ]
        commit_lsn, xid, commit_time = self._context(msg.xid)
        change = Change(
            msg.prefix,
            "message",
            msg.content,
            None,
            "",
            msg.lsn,
            commit_lsn,
            xid,
            commit_time,
            detail,
        )
        return self._add(change, msg.xid)

    def _stream_commit(self, msg: StreamCommit) -> list[ChangeBatch]:
        entries = self._streams.pop(msg.xid, [])
        txn = _Txn(msg.xid, msg.commit_lsn, msg.commit_time)
        txn.origin = self._stream_origins.pop(msg.xid, None)
        limit = self.max_batch_size or len(entries) or 1
        out: list[ChangeBatch] = []
        changes = [
            attrs.evolve(ch, commit_lsn=msg.commit_lsn, commit_time=msg.commit_time, xid=msg.xid)
            for _, ch in entries
        ]
        for start in range(0, max(len(changes), 1), limit):
            part = changes[start : start + limit]
            final = start + limit >= len(changes)
            out.append(self._batch(txn, part, final=final, end_lsn=msg.end_lsn if final else _ZERO))
        return out


def _finish_prepared(msg: CommitPrepared | RollbackPrepared) -> ChangeBatch:
    """A prepared transaction's outcome: one ``commit_prepared`` or ``rollback_prepared``."""
    if isinstance(msg, CommitPrepared):
        op, lsn, end, when = "commit_prepared", msg.commit_lsn, msg.end_lsn, msg.commit_time
    else:
        op, lsn, end, when = (
            "rollback_prepared",
            msg.rollback_end_lsn,
            msg.rollback_end_lsn,
            msg.rollback_time,
        )
    change = Change("", op, msg.gid, None, "", lsn, lsn, msg.xid, when, {"gid": msg.gid})
    return ChangeBatch(
        [change], final=True, chunk=0, xid=msg.xid, commit_lsn=lsn, end_lsn=end, commit_time=when
    )
