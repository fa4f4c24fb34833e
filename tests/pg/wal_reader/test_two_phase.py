"""Two-phase decoding (option ``two_phase``): what the handler receives, and the ack rule.

A prepared transaction is delivered at PREPARE TRANSACTION, its final batch
ending with a ``prepare`` change; its outcome arrives later as a batch of one
``commit_prepared`` or ``rollback_prepared`` change.  Each batch is
acknowledged only after the handler returned from it, so a reader restarted
between PREPARE and COMMIT PREPARED gets the prepared changes again if it had
not finished them, and only the outcome if it had.

PREPARE TRANSACTION needs ``max_prepared_transactions > 0``, which needs a
server start: these tests run a server of their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from wr_helpers import Recorder, drop_slot, execute, query, unique

from otpy import Ref
from otpy.pg import wal_reader
from otpy.pg.testing import PostgresServer, external_dsn
from otpy.pg.wal_reader import ChangeBatch, InvalidOptions, SlotMismatch


@pytest.fixture(scope="module")
def tp_server() -> Iterator[str]:
    if external_dsn() is not None:
        pytest.skip("needs a throw-away server with max_prepared_transactions (OTPY_TEST_DSN set)")
    with PostgresServer(settings={"max_prepared_transactions": "10"}) as server:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE tp (id int PRIMARY KEY, v text)")
            conn.execute("CREATE PUBLICATION tp_pub FOR TABLE tp")
        yield server.dsn


@pytest.fixture
async def tp(tp_server: str) -> AsyncIterator[str]:
    version = (await query(tp_server, "SELECT current_setting('server_version_num')::int"))[0][0]
    if version < 150000:
        pytest.skip("two_phase needs PostgreSQL 15+")
    yield tp_server
    await execute(tp_server, "DELETE FROM tp")


async def prepare(dsn: str, gid: str, *ids: int) -> None:
    values = ", ".join(f"({i}, '{gid}')" for i in ids)
    await execute(dsn, "BEGIN", f"INSERT INTO tp VALUES {values}", f"PREPARE TRANSACTION '{gid}'")


def shape(batch: ChangeBatch) -> list[tuple[str, Any]]:
    return [(c.op, c.data if c.op not in ("insert",) else c.data["id"]) for c in batch]


async def test_a_prepared_transaction_arrives_at_prepare_then_its_outcome(
    tp: str, readers: Ref
) -> None:
    rec = Recorder()
    ref = await wal_reader.subscribe(rec, tp, unique("tp"), ["tp_pub"], {"two_phase": True})
    try:
        await prepare(tp, "g1", 1, 2)
        await rec.wait_for(lambda: len(rec.batches) >= 1)
        assert shape(rec.batches[0]) == [("insert", 1), ("insert", 2), ("prepare", "g1")]
        assert rec.batches[0].final
        await execute(tp, "COMMIT PREPARED 'g1'")
        await rec.wait_for(lambda: len(rec.batches) >= 2)
        assert shape(rec.batches[1]) == [("commit_prepared", "g1")]
        await prepare(tp, "g2", 3)
        await execute(tp, "ROLLBACK PREPARED 'g2'")
        await rec.wait_for(lambda: len(rec.batches) >= 4)
        assert shape(rec.batches[2]) == [("insert", 3), ("prepare", "g2")]
        assert shape(rec.batches[3]) == [("rollback_prepared", "g2")]
        # The xid ties the outcome to its prepared changes.
        assert rec.batches[0].xid == rec.batches[1].xid != rec.batches[2].xid
        assert rec.batches[3][0].detail == {"gid": "g2"}
    finally:
        await wal_reader.unsubscribe(ref)


async def test_a_streamed_prepared_transaction_arrives_at_prepare_too(
    tp: str, readers: Ref
) -> None:
    rec = Recorder()
    opts = {"two_phase": True, "streaming": True, "max_batch_size": None}
    ref = await wal_reader.subscribe(rec, tp, unique("tp_stream"), ["tp_pub"], opts)
    try:
        # Bigger than logical_decoding_work_mem: streamed while it runs (Stream Prepare).
        await execute(
            tp,
            "SET logical_decoding_work_mem = '64kB'",
            "BEGIN",
            "INSERT INTO tp SELECT g, repeat('x', 100) FROM generate_series(100, 2099) g",
            "PREPARE TRANSACTION 'big'",
            "COMMIT PREPARED 'big'",
        )
        await rec.wait_for(lambda: len(rec.batches) >= 2)
        prepared, outcome = rec.batches
        assert [c.data["id"] for c in prepared[:-1]] == list(range(100, 2100))
        assert shape(prepared)[-1] == ("prepare", "big")
        assert shape(outcome) == [("commit_prepared", "big")]
    finally:
        await wal_reader.unsubscribe(ref)


async def test_a_restart_after_the_prepare_was_handled_gets_only_the_outcome(
    tp: str, readers: Ref
) -> None:
    slot = unique("tp_restart")
    opts = {"two_phase": True, "slot_type": "persistent"}
    rec = Recorder()
    ref = await wal_reader.subscribe(rec, tp, slot, ["tp_pub"], opts)
    try:
        await prepare(tp, "g3", 10)
        await rec.wait_for(lambda: len(rec.batches) >= 1)
        await wal_reader.unsubscribe(ref)  # the prepare was handled: acknowledged
        await execute(tp, "COMMIT PREPARED 'g3'")
        again = Recorder()
        ref = await wal_reader.subscribe(again, tp, slot, ["tp_pub"], opts)
        await again.wait_for(lambda: len(again.batches) >= 1)
        assert [shape(b) for b in again.batches] == [[("commit_prepared", "g3")]]
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(tp, slot)


async def test_a_prepare_the_handler_did_not_finish_is_delivered_again(
    tp: str, readers: Ref
) -> None:
    slot = unique("tp_fail")
    failures: list[int] = []

    def fail(batch: ChangeBatch) -> None:
        if any(c.op == "prepare" for c in batch) and not failures:
            failures.append(1)
            raise RuntimeError("handler fails on the prepared transaction")

    rec = Recorder(fail)
    opts = {
        "two_phase": True,
        "slot_type": "persistent",
        "restart_backoff": {"initial": 0.05, "maximum": 0.5},
    }
    ref = await wal_reader.subscribe(rec, tp, slot, ["tp_pub"], opts)
    try:
        await prepare(tp, "g4", 20, 21)
        await execute(tp, "COMMIT PREPARED 'g4'")
        await rec.wait_for(lambda: len(rec.batches) >= 2)
        assert failures == [1]
        assert [shape(b) for b in rec.batches] == [
            [("insert", 20), ("insert", 21), ("prepare", "g4")],
            [("commit_prepared", "g4")],
        ]
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(tp, slot)


async def test_without_two_phase_a_prepared_transaction_arrives_whole_at_commit_prepared(
    tp: str, readers: Ref
) -> None:
    rec = Recorder()
    ref = await wal_reader.subscribe(rec, tp, unique("tp_off"), ["tp_pub"])
    try:
        await prepare(tp, "g5", 30)
        await prepare(tp, "g6", 31)
        await execute(tp, "ROLLBACK PREPARED 'g6'", "COMMIT PREPARED 'g5'")
        await execute(tp, "INSERT INTO tp VALUES (32, 'plain')")
        await rec.wait_for(lambda: len(rec.changes) >= 2)
        assert [shape(b) for b in rec.batches] == [[("insert", 30)], [("insert", 32)]]
    finally:
        await wal_reader.unsubscribe(ref)


async def test_a_slot_once_read_with_two_phase_is_refused_to_a_reader_without_it(
    tp: str, readers: Ref
) -> None:
    # PostgreSQL keeps the slot two-phase: a reader without the option would get
    # prepare changes it does not expect, so it is refused with what to do.
    slot = unique("tp_sticky")
    persistent = {"slot_type": "persistent"}
    ref = await wal_reader.subscribe(
        Recorder(), tp, slot, ["tp_pub"], {**persistent, "two_phase": True}
    )
    await wal_reader.unsubscribe(ref)
    try:
        with pytest.raises(SlotMismatch, match="subscribe with two_phase=True"):
            await wal_reader.subscribe(Recorder(), tp, slot, ["tp_pub"], persistent)
    finally:
        drop_slot(tp, slot)


def test_two_phase_is_a_boolean() -> None:
    with pytest.raises(InvalidOptions, match="two_phase"):
        wal_reader.ReaderOptions.coerce({"two_phase": "on"})
