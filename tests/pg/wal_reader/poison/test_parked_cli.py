"""``otpy parked list|replay|discard`` against a dead-letter table on the real server."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from typing import Any

import pytest
import trio
from poison_helpers import CollectingHandler

from otpy.cli import EXIT_NOT_FOUND, EXIT_OK, main
from otpy.pg.connection import TrioConnection
from otpy.pg.replication.changes import Change, ChangeBatch
from otpy.pg.replication.lsn import LSN
from otpy.pg.wal_reader import dead_letters


def park_one(dsn: str, table: str, amount: str) -> int:
    """Park a one-change transaction directly through the API (no reader needed)."""
    commit = LSN.parse("0/AB00010")
    moment = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    change = Change(
        "orders", "insert", {"id": 7, "amount": decimal.Decimal(amount)}, None, "public",
        LSN.parse("0/AB00000"), commit, 901, moment,
    )  # fmt: skip
    batch = ChangeBatch(
        [change], final=True, chunk=0, xid=901, commit_lsn=commit,
        end_lsn=LSN.parse("0/AB00040"), commit_time=moment,
    )  # fmt: skip

    async def park() -> int:
        async with await TrioConnection.connect(dsn, autocommit=True) as conn:
            return await dead_letters.park(
                conn, slot="cli_slot", batch=batch, error=ValueError("bad amount"), attempts=3,
                table=table,
            )  # fmt: skip

    return trio.run(park)


def test_parked_list_replay_and_discard(
    module_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    table = "cli_dead_letters"
    letter = park_one(module_dsn, table, "12.50")
    common = ["--dsn", module_dsn, "--table", table]

    assert main(["parked", "list", *common]) == EXIT_OK
    out = capsys.readouterr().out
    assert "cli_slot" in out and "0/AB00010" in out and "ValueError: bad amount" in out

    assert main(["parked", "list", *common, "--json"]) == EXIT_OK
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["id"] == letter and record["attempts"] == 3 and record["xid"] == 901
    assert record["changes"][0]["data"]["amount"] == {"$t": "decimal", "v": "12.50"}

    CollectingHandler.received.clear()
    handler = "poison_helpers:CollectingHandler"
    assert main(["parked", "replay", str(letter), *common, "--handler", handler]) == EXIT_OK
    (batch,) = CollectingHandler.received
    assert batch[0].data == {"id": 7, "amount": decimal.Decimal("12.50")}
    assert batch.commit_lsn == LSN.parse("0/AB00010") and batch.xid == 901
    assert "no parked transactions" in _listing(module_dsn, table, capsys)

    code = main(["parked", "replay", str(letter), *common, "--handler", handler])
    assert code == EXIT_NOT_FOUND
    assert f"no parked transaction #{letter}" in capsys.readouterr().err

    again = park_one(module_dsn, table, "1")
    assert main(["parked", "discard", str(again), *common, "--yes"]) == EXIT_OK
    assert "no parked transactions" in _listing(module_dsn, table, capsys)


def _listing(dsn: str, table: str, capsys: Any) -> str:
    capsys.readouterr()
    assert main(["parked", "list", "--dsn", dsn, "--table", table]) == EXIT_OK
    return str(capsys.readouterr().out)


def test_values_survive_the_dead_letter_encoding() -> None:
    import ipaddress
    import uuid

    from psycopg.types.range import Range

    from otpy.pg.replication import UNCHANGED_TOAST

    values = [
        None, True, 3, 2.5, float("inf"), "text", [1, [2, "x"]], (1, 2), {1: "int key"},
        {"$t": "a user key"}, dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.date(2024, 2, 3),
        dt.time(4, 5, 6), dt.timedelta(days=-1, microseconds=5), decimal.Decimal("1e-30"),
        b"\x00\x01", uuid.UUID(int=5), ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_interface("::1/128"),
        Range(1, 10, "[)"), Range(empty=True), UNCHANGED_TOAST,
    ]  # fmt: skip
    for value in values:
        encoded = json.loads(json.dumps(dead_letters.encode_value(value)))
        assert dead_letters.decode_value(encoded) == value, value
    nan = dead_letters.decode_value(json.loads(json.dumps(dead_letters.encode_value(float("nan")))))
    assert nan != nan


def test_values_of_user_types_survive_the_dead_letter_encoding(module_dsn: str) -> None:
    # What the reader decodes user types into (psycopg's enum members and named
    # tuples), pg_lsn's LSN and multiranges come back as the same values, so a
    # replayed transaction gives the handler what the first delivery gave.
    import psycopg
    from psycopg.types.composite import CompositeInfo, register_composite
    from psycopg.types.enum import EnumInfo, register_enum
    from psycopg.types.multirange import Multirange

    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("DROP TYPE IF EXISTS dl_pair, dl_mood")
        conn.execute("CREATE TYPE dl_mood AS ENUM ('sad', 'happy')")
        conn.execute("CREATE TYPE dl_pair AS (n int, s text, m dl_mood)")
        register_enum(EnumInfo.fetch(conn, "dl_mood"), conn)  # type: ignore[arg-type]
        register_composite(CompositeInfo.fetch(conn, "dl_pair"), conn)  # type: ignore[arg-type]
        row = conn.execute(
            "SELECT 'happy'::dl_mood, ROW(1, 'x', 'sad')::dl_pair, ROW(NULL, NULL, NULL)::dl_pair, "
            "'{[1,3),[5,7)}'::int4multirange, '{}'::int4multirange, "
            "ARRAY['sad', 'happy']::dl_mood[]"
        ).fetchone()
    assert row is not None
    values = [*row, LSN.parse("16/B374D848"), [LSN(0)], {"k": row[0]}]
    assert isinstance(values[3], Multirange)
    for value in values:
        back = dead_letters.decode_value(json.loads(json.dumps(dead_letters.encode_value(value))))
        assert repr(back) == repr(value)
        assert type(back).__name__ == type(value).__name__
        # An enum member comes back in a class of the same name and members, not the same
        # class (docs/types.md: compare enum values by name): equal unless one is inside.
        assert back == value or "Dl_Mood" in repr(value)
    mood = dead_letters.decode_value(json.loads(json.dumps(dead_letters.encode_value(row[0]))))
    assert (mood.name, mood.value, [m.name for m in type(mood)]) == ("happy", 2, ["sad", "happy"])
    pair = dead_letters.decode_value(json.loads(json.dumps(dead_letters.encode_value(row[1]))))
    assert pair._fields == ("n", "s", "m") and pair.m.name == "sad"
    assert type(dead_letters.decode_value(dead_letters.encode_value(values[6]))) is LSN


def test_parking_the_same_transaction_again_replaces_its_dead_letter(module_dsn: str) -> None:
    """A crash after parking redelivers the transaction: it is parked again, not twice."""
    table = "again_dead_letters"
    first = park_one(module_dsn, table, "1")
    second = park_one(module_dsn, table, "2")
    assert second == first

    async def letters() -> list[dead_letters.DeadLetter]:
        async with await TrioConnection.connect(module_dsn, autocommit=True) as conn:
            return await dead_letters.list_parked(conn, table=table)

    (letter,) = trio.run(letters)
    assert letter.changes[0].data["amount"] == decimal.Decimal("2")
