"""TransactionAssembler: how decoded pgoutput messages become ChangeBatch values (no server)."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs
import pytest

from otpy.pg.replication import (
    LSN,
    Begin,
    Column,
    Commit,
    Delete,
    Relation,
    TupleData,
    ValueDecoder,
)
from otpy.pg.replication.changes import Change, ChangeBatch, TransactionAssembler, make_change
from otpy.pg.replication.pgoutput import Insert

INT4 = 23
WHEN = datetime(2026, 1, 1, tzinfo=UTC)
RELATION = Relation(None, 90001, "public", "t", "d", (Column(1, "id", INT4, -1),))


def row(i: int) -> TupleData:
    return TupleData(b"t", (str(i).encode(),))


def transaction(assembler: TransactionAssembler, n: int, *, delete: bool) -> list[ChangeBatch]:
    """Feed one transaction of ``n`` inserts (or deletes: the generic path); return its batches."""
    out = assembler.feed(LSN(1), RELATION)
    out += assembler.feed(LSN(2), Begin(LSN(1000), WHEN, 7))
    for i in range(n):
        msg = (
            Delete(None, RELATION.oid, row(i), None)
            if delete
            else Insert(None, RELATION.oid, row(i))
        )
        out += assembler.feed(LSN(10 + i), msg)
    out += assembler.feed(LSN(999), Commit(0, LSN(1000), LSN(1001), WHEN))
    return out


@pytest.mark.parametrize("delete", [False, True], ids=["insert", "delete"])
@pytest.mark.parametrize(
    ("n", "sizes"),
    [(0, [0]), (2, [2]), (3, [3]), (4, [3, 1]), (6, [3, 3]), (7, [3, 3, 1])],
)
def test_chunks_are_never_empty_and_the_last_is_final(
    n: int, sizes: list[int], delete: bool
) -> None:
    batches = transaction(TransactionAssembler(ValueDecoder(), max_batch_size=3), n, delete=delete)
    assert [len(b) for b in batches] == sizes
    assert [b.chunk for b in batches] == list(range(len(sizes)))
    assert [b.final for b in batches] == [False] * (len(sizes) - 1) + [True]
    assert batches[-1].end_lsn == LSN(1001)
    assert [c.data["id"] for b in batches for c in b] == list(range(n))
    assert all(c.xid == 7 and c.commit_lsn == LSN(1000) for b in batches for c in b)


@pytest.mark.parametrize("limit", [None, 3])
def test_an_insert_of_the_fast_path_is_the_change_the_constructor_builds(
    limit: int | None,
) -> None:
    """Inserts are built through Change's slot descriptors, not attrs' __init__: the
    same value in every field, repr and equality, whatever the chunking."""
    inserts = [
        c
        for b in transaction(TransactionAssembler(ValueDecoder(), limit), 5, delete=False)
        for c in b
    ]
    for i, change in enumerate(inserts):
        expected = Change("t", "insert", {"id": i}, None, "public", LSN(10 + i), LSN(1000), 7, WHEN)
        assert type(change) is Change
        assert change == expected and repr(change) == repr(expected)
        assert attrs.asdict(change, recurse=False) == attrs.asdict(expected, recurse=False)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            change.op = "delete"  # type: ignore[misc]


def test_a_snapshot_row_of_the_fast_path_is_the_change_the_constructor_builds() -> None:
    data = {"id": 1, "name": "a"}
    fast = make_change("users", "read", data, "public")
    slow = Change("users", "read", data, None, "public")
    assert fast == slow and repr(fast) == repr(slow)
    assert attrs.asdict(fast, recurse=False) == attrs.asdict(slow, recurse=False)
    assert fast.data is data
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.op = "insert"  # type: ignore[misc]
