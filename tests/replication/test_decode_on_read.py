"""Inserted rows are decoded when the handler first reads ``Change.data``, transparently.

The reader queues rows between its socket task and the handler undecoded
(``ValueDecoder.decode_later``): decoded rows in a queue are what made the
garbage collector's full collections cost a third of the reader's CPU.  What
the handler sees must not change: ``change.data`` is the plain dict eager
decoding gives (same values, same types, for every type of
``test_values.CASES``, text and binary), the same object at every read, and a
stale user type is still reported when the row arrives, not when it is read.
"""

from __future__ import annotations

import pickle
from typing import Any

import attrs
import pytest
from pgcapture import Capture, execute
from psycopg.adapt import Loader
from psycopg.pq import Format
from test_values import CASES, matches

from otpy.pg.replication import (
    LSN,
    Begin,
    Insert,
    PgOutputDecoder,
    Relation,
    ValueDecoder,
)
from otpy.pg.replication.changes import Change, TransactionAssembler
from otpy.pg.replication.values import PendingRow, TypeRefreshNeeded


def _capture(dsn: str, table: str, columns: str, rows: list[str], binary: bool) -> list[Any]:
    execute(dsn, f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
    cap = Capture(dsn, [table])
    try:
        execute(dsn, *(f"INSERT INTO {table} VALUES ({row})" for row in rows))
        decoder = PgOutputDecoder()
        return [decoder.decode(raw) for raw in cap.peek(1, binary=binary)]
    finally:
        cap.drop()


@pytest.fixture(scope="module")
def every_type(module_dsn: str) -> dict[bool, list[Any]]:
    """pgoutput messages of a row of every CASES literal and a row of NULLs, text and binary."""
    columns = ", ".join(f"c{i} {case.pg_type}" for i, case in enumerate(CASES))
    literals = ", ".join(case.literal for case in CASES)
    out = {}
    for binary in (False, True):
        execute(module_dsn, "DROP TABLE IF EXISTS read_types")
        out[binary] = _capture(
            module_dsn,
            "read_types",
            f"id int PRIMARY KEY, {columns}",
            [f"1, {literals}", "2" + ", NULL" * len(CASES)],
            binary,
        )
    return out


def _changes(messages: list[Any], decoder: ValueDecoder) -> list[Change]:
    assembler = TransactionAssembler(decoder)
    changes: list[Change] = []
    for message in messages:
        for batch in assembler.feed(LSN(1), message):
            changes.extend(batch)
    return changes


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_every_value_read_later_is_the_value_eager_decoding_gives(
    every_type: dict[bool, list[Any]], binary: bool
) -> None:
    messages = every_type[binary]
    eager = ValueDecoder()
    relation = next(m for m in messages if isinstance(m, Relation))
    eager.add_relation(relation)
    expected = [eager.decode(m.relation_oid, m.new) for m in messages if isinstance(m, Insert)]
    changes = _changes(messages, ValueDecoder())
    assert len(changes) == len(expected) == 2
    for change, row in zip(changes, expected, strict=True):
        data = change.data
        assert type(data) is dict
        assert list(data) == list(row)
        for name, value in row.items():
            if name == "id":
                assert data[name] == value
                continue
            case = CASES[int(name[1:])]
            if value is None:
                assert data[name] is None
            else:
                # Equal and of the same type(s); NaN, never equal to itself, by its repr.
                same = matches(data[name], value) or repr(data[name]) == repr(value)
                assert same and type(data[name]) is type(value), (case.pg_type, data[name], value)


def test_data_is_one_dict_that_behaves_as_any_attribute(module_dsn: str) -> None:
    messages = _capture(module_dsn, "read_dict", "id int PRIMARY KEY, t text", ["1, 'a'"], False)
    change = _changes(messages, ValueDecoder())[0]
    first = change.data
    assert first is change.data  # decoded once: a handler's changes to it stay
    first["t"] = "changed"
    assert change.data["t"] == "changed"
    match change:
        case Change("read_dict", "insert", {"id": 1}, None):
            pass
        case _:
            pytest.fail(f"positional pattern does not match {change!r}")
    same = _changes(messages, ValueDecoder())[0]
    assert same != change and same.data == {"id": 1, "t": "a"}
    assert attrs.evolve(same, xid=5).data == {"id": 1, "t": "a"}
    assert pickle.loads(pickle.dumps(same)) == same
    assert "'t': 'a'" in repr(same)
    built = Change("t", "insert", {"x": 1}, None)  # users' own Change values are untouched
    assert built.data == {"x": 1}


def test_rows_are_not_decoded_until_the_handler_reads_them(module_dsn: str) -> None:
    messages = _capture(module_dsn, "read_late", "id int PRIMARY KEY, n int", ["1, 2"], False)
    decoder = ValueDecoder()
    calls: list[bytes] = []

    class Counting(Loader):
        def load(self, data: Any) -> int:
            calls.append(bytes(data))
            return int(bytes(data))

    decoder.adapters.register_loader("int4", Counting)
    decoder.refresh()
    changes = _changes(messages, decoder)
    assert calls == []  # queued: nothing decoded yet
    assert changes[0].data == {"id": 1, "n": 2}
    assert sorted(calls) == [b"1", b"2"]


def test_a_stale_user_type_is_reported_when_the_row_arrives(module_dsn: str) -> None:
    execute(
        module_dsn,
        "DROP TABLE IF EXISTS read_enum",
        "DROP TYPE IF EXISTS read_mood",
        "CREATE TYPE read_mood AS ENUM ('sad')",
    )
    messages = _capture(
        module_dsn, "read_enum", "id int PRIMARY KEY, m read_mood", ["1, 'sad'"], False
    )
    decoder = ValueDecoder()
    relation = next(m for m in messages if isinstance(m, Relation))
    decoder.add_relation(relation)
    oid = relation.columns[1].type_oid

    class Refusing(Loader):  # what a cached enum does with a label added since
        def load(self, data: Any) -> Any:
            raise ValueError("unknown label")

    decoder.adapters.register_loader(oid, Refusing)
    decoder.adapters.register_loader(
        oid, type("RefusingBinary", (Refusing,), {"format": Format.BINARY})
    )
    decoder.refresh()
    decoder.refresh_on_failure = True
    insert = next(m for m in messages if isinstance(m, Insert))
    with pytest.raises(TypeRefreshNeeded) as caught:
        decoder.decode_later(insert.relation_oid, insert.new)
    assert caught.value.oids == frozenset({oid})
    # Without refresh (backing off), the row arrives and reads its value as text.
    decoder.refresh_on_failure = False
    pending = decoder.decode_later(insert.relation_oid, insert.new)
    assert isinstance(pending, PendingRow)
    decoder.refresh_on_failure = True  # reading never raises TypeRefreshNeeded
    assert pending.decode() == {"id": 1, "m": "sad"}


def test_rows_decoded_late_keep_their_transactions_and_order(module_dsn: str) -> None:
    messages = _capture(
        module_dsn, "read_many", "id int PRIMARY KEY", [str(i) for i in range(1, 8)], False
    )
    begins = [m.xid for m in messages if isinstance(m, Begin)]
    changes = _changes(messages, ValueDecoder())
    assert [c.data["id"] for c in changes] == list(range(1, 8))
    assert [c.xid for c in changes] == begins  # one transaction per INSERT
