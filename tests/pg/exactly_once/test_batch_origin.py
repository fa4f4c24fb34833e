"""Batches carry the replication origin of their source transaction (no server).

pgoutput sends an Origin message after Begin (or the first Stream Start) of a
transaction written under a replication origin; the assembler puts its name
on every batch of that transaction, which is what the client-side loop
filter (``ExactlyOnce(skip_replicated=True)``) reads on PostgreSQL < 16.
"""

from __future__ import annotations

from datetime import UTC, datetime

from otpy.pg.replication import LSN, Begin, Column, Commit, Relation, TupleData, ValueDecoder
from otpy.pg.replication.changes import TransactionAssembler
from otpy.pg.replication.pgoutput import Insert, Origin, StreamCommit, StreamStart, StreamStop

WHEN = datetime(2026, 1, 1, tzinfo=UTC)
RELATION = Relation(None, 90002, "public", "t", "d", (Column(1, "id", 23, -1),))


def insert(i: int, xid: int | None = None) -> Insert:
    return Insert(xid, RELATION.oid, TupleData(b"t", (str(i).encode(),)))


def test_every_chunk_of_a_transaction_carries_its_origin() -> None:
    assembler = TransactionAssembler(ValueDecoder(), max_batch_size=2)
    out = assembler.feed(LSN(1), RELATION)
    out += assembler.feed(LSN(2), Begin(LSN(100), WHEN, 7))
    out += assembler.feed(LSN(3), Origin(LSN(50), "sync_a_to_b"))
    for i in range(5):
        out += assembler.feed(LSN(10 + i), insert(i))
    out += assembler.feed(LSN(99), Commit(0, LSN(100), LSN(101), WHEN))
    assert [b.origin for b in out] == ["sync_a_to_b"] * 3
    assert out[-1].final


def test_a_local_transaction_has_no_origin_even_after_a_replicated_one() -> None:
    assembler = TransactionAssembler(ValueDecoder())
    assembler.feed(LSN(1), RELATION)
    assembler.feed(LSN(2), Begin(LSN(100), WHEN, 7))
    assembler.feed(LSN(3), Origin(LSN(50), "elsewhere"))
    assembler.feed(LSN(4), insert(1))
    (replicated,) = assembler.feed(LSN(99), Commit(0, LSN(100), LSN(101), WHEN))
    assembler.feed(LSN(102), Begin(LSN(200), WHEN, 8))
    assembler.feed(LSN(103), insert(2))
    (local,) = assembler.feed(LSN(199), Commit(0, LSN(200), LSN(201), WHEN))
    assert (replicated.origin, local.origin) == ("elsewhere", None)


def test_a_streamed_transaction_keeps_the_origin_of_its_first_segment() -> None:
    assembler = TransactionAssembler(ValueDecoder())
    assembler.feed(LSN(1), RELATION)
    assembler.feed(LSN(2), StreamStart(9, True))
    assembler.feed(LSN(3), Origin(LSN(50), "sync_b_to_a"))
    assembler.feed(LSN(4), insert(1, xid=9))
    assembler.feed(LSN(5), StreamStop())
    assembler.feed(LSN(6), StreamStart(9, False))
    assembler.feed(LSN(7), insert(2, xid=9))
    assembler.feed(LSN(8), StreamStop())
    (batch,) = assembler.feed(LSN(99), StreamCommit(9, 0, LSN(100), LSN(101), WHEN))
    assert batch.origin == "sync_b_to_a" and len(batch) == 2
