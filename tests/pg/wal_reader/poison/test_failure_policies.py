"""A handler that keeps failing on one transaction: retry, stop for good, or park it.

Against the real server: the reader restarts with backoff between attempts,
and the attempts of one transaction are counted across those restarts.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest
import trio
from poison_helpers import confirmed, wait_confirmed_past
from wr_helpers import (
    FAST_BACKOFF,
    Recorder,
    drop_slot,
    execute,
    published_table,
    unique,
)

from otpy.pg import pool, wal_reader
from otpy.pg.replication.errors import InvalidOptions
from otpy.pg.wal_reader import ChangeBatch, HandlerFailed, dead_letters


class Poisoned(Exception):
    """What the test handlers raise on the poisoned row."""


def fail_on(value: int) -> Any:
    """A Recorder hook that raises on any batch holding a row with ``v == value``."""

    def check(batch: ChangeBatch) -> None:
        if any(c.data and c.data.get("v") == value for c in batch):
            raise Poisoned(f"cannot handle v={value}")

    return check


class StopRecorder(Recorder):
    """Records ``ref.error`` at each stop call."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.stop_errors: list[Any] = []
        self.attempts = 0

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        self.attempts += 1
        await super().handle_replication_data(ref, changes)

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        self.stop_errors.append(ref.error)
        await super().handle_replication_stop(ref, slot_name)


async def test_stop_policy_ends_the_subscription_after_max_attempts_with_handler_failed(
    readers: Any, module_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    table = unique("stop_t")
    pub = published_table(module_dsn, table, "id serial primary key, v int")
    slot = unique("stop_slot")
    rec = StopRecorder(fail_on(13))
    ref = await wal_reader.subscribe(
        rec,
        module_dsn,
        slot,
        [pub],
        {
            "slot_type": "persistent",
            "restart_backoff": FAST_BACKOFF,
            "on_failure": {"policy": "stop", "max_attempts": 3},
        },
    )
    try:
        await execute(module_dsn, f"INSERT INTO {table} (v) VALUES (1)")
        await rec.wait_changes(1)
        await execute(module_dsn, f"INSERT INTO {table} (v) VALUES (13)")
        with trio.fail_after(20):
            error = await ref.wait_stopped()
        assert isinstance(error, HandlerFailed) and ref.error is error
        assert error.attempts == 3 and isinstance(error.last_error, Poisoned)
        assert error.__cause__ is error.last_error
        # Three failed deliveries (plus the good one), then nothing more.
        assert rec.attempts == 1 + 3
        # Two ordinary stops (the crashes), then one terminal stop with the error.
        assert rec.stop_errors == [None, None, error]
        # One clear ERROR line says what happened and what to do.
        (line,) = [
            r for r in caplog.records if getattr(r, "event", None) == "replication_handler_failed"
        ]
        assert line.levelname == "ERROR" and "failed 3 times" in line.getMessage()
        assert "Fix the handler and subscribe again" in line.getMessage()
        # Nothing of the poisoned transaction was acknowledged: the slot still holds it.
        assert await confirmed(module_dsn, slot) < error.commit_lsn
        # A fixed handler subscribing again gets it first.
        fixed = Recorder()
        ref2 = await wal_reader.subscribe(
            fixed, module_dsn, slot, [pub], {"slot_type": "persistent"}
        )
        try:
            changes = await fixed.wait_changes(1)
            assert changes[0].data["v"] == 13 and changes[0].commit_lsn == error.commit_lsn
        finally:
            await wal_reader.unsubscribe(ref2)
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)


async def test_park_policy_sets_the_transaction_aside_and_goes_on(
    readers: Any, module_dsn: str, dl_pool: pool.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    table = unique("park_t")
    pub = published_table(
        module_dsn,
        table,
        "id serial primary key, v int, amount numeric, at timestamptz, blob bytea, "
        "key uuid, doc jsonb, during interval",
    )
    slot = unique("park_slot")
    rec = Recorder(fail_on(13))
    ref = await wal_reader.subscribe(
        rec,
        module_dsn,
        slot,
        [pub],
        {
            "slot_type": "persistent",
            "restart_backoff": FAST_BACKOFF,
            "on_failure": {"policy": "park", "max_attempts": 2, "pool": "dl"},
        },
    )
    try:
        await execute(
            module_dsn,
            f"INSERT INTO {table} (v, amount, at, blob, key, doc, during) VALUES "
            f"(13, 1.10, '2024-05-06 07:08:09.123456+00', '\\x00ff', "
            f"'6b1d3f4e-8c2a-4b7d-9e1f-0a2b3c4d5e6f', '{{\"a\": [1, null]}}', '1 day 2 hours')",
            f"INSERT INTO {table} (v) VALUES (14)",
        )
        # The poisoned transaction is skipped after 2 attempts; the next one arrives.
        changes = await rec.wait_changes(1, within=20)
        assert [c.data["v"] for c in changes] == [14]
        letters = await dead_letters.list_parked("dl", slot=slot)
        assert len(letters) == 1
        letter = letters[0]
        assert letter.attempts == 2 and letter.error.startswith("Poisoned: cannot handle v=13")
        assert letter.complete and letter.first_chunk == 0
        (line,) = [r for r in caplog.records if getattr(r, "event", None) == "replication_parked"]
        assert line.levelname == "WARNING" and f"dead letter #{letter.id}" in line.getMessage()
        row = letter.changes[0].data
        assert row["v"] == 13 and row["amount"] == decimal.Decimal("1.10")
        assert row["at"] == dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
        assert row["blob"] == b"\x00\xff"
        assert row["key"] == uuid.UUID("6b1d3f4e-8c2a-4b7d-9e1f-0a2b3c4d5e6f")
        assert row["during"] == dt.timedelta(days=1, hours=2)
        assert letter.changes[0].table == table and letter.changes[0].op == "insert"
        # The poisoned transaction was acknowledged: the slot moved past it.
        await wait_confirmed_past(module_dsn, slot, letter.commit_lsn)

        # Replay: a failing handler keeps the letter (one more attempt)...
        with pytest.raises(Poisoned):
            await dead_letters.replay("dl", letter.id, Recorder(fail_on(13)))
        assert (await dead_letters.get("dl", letter.id)).attempts == 3
        # ...a working one receives the same changes and removes it.
        good = Recorder()
        replayed = await dead_letters.replay("dl", letter.id, good)
        assert good.batches[0].commit_lsn == letter.commit_lsn and good.batches[0].final
        assert good.rows == [(c.table, c.op, c.data, c.old) for c in replayed.changes]
        assert await dead_letters.list_parked("dl", slot=slot) == []
        with pytest.raises(dead_letters.DeadLetterNotFound):
            await dead_letters.replay("dl", letter.id, good)
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)


async def test_park_of_a_chunked_transaction_keeps_the_whole_transaction(
    readers: Any, module_dsn: str, dl_pool: pool.Pool
) -> None:
    table = unique("chunk_t")
    pub = published_table(module_dsn, table, "id serial primary key, v int")
    slot = unique("chunk_slot")
    rec = Recorder(fail_on(3))
    ref = await wal_reader.subscribe(
        rec,
        module_dsn,
        slot,
        [pub],
        {
            "slot_type": "persistent",
            "max_batch_size": 2,
            "restart_backoff": FAST_BACKOFF,
            "on_failure": {"policy": "park", "max_attempts": 1, "pool": "dl", "table": "dl_chunks"},
        },
    )
    try:
        # Rows 1..5 in one transaction: chunks [1, 2], [3, 4], [5]; chunk 1 fails.
        await execute(
            module_dsn,
            f"INSERT INTO {table} (v) SELECT g FROM generate_series(1, 5) g",
            f"INSERT INTO {table} (v) VALUES (6)",
        )
        await rec.wait_for(lambda: any(c.data["v"] == 6 for c in rec.changes), within=20)
        # Chunk 0 reached the handler once; redelivered, the transaction went to the
        # dead letter whole: a handler that held chunk 0 in a transaction of its
        # own rolled it back, so a letter from chunk 1 on would lose rows 1 and 2.
        assert [c.data["v"] for c in rec.changes] == [1, 2, 6]
        (letter,) = await dead_letters.list_parked("dl", slot=slot, table="dl_chunks")
        assert letter.first_chunk == 0 and letter.complete
        assert [c.data["v"] for c in letter.changes] == [1, 2, 3, 4, 5]
        assert await dead_letters.discard("dl", letter.id, table="dl_chunks")
        assert not await dead_letters.discard("dl", letter.id, table="dl_chunks")
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)


async def test_attempts_count_one_transaction_and_restart_for_the_next(
    readers: Any, module_dsn: str
) -> None:
    """Each transaction fails once (max_attempts 2): none is given up, both are delivered."""
    table = unique("count_t")
    pub = published_table(module_dsn, table, "id serial primary key, v int")
    slot = unique("count_slot")
    failed: set[int] = set()

    def once(batch: ChangeBatch) -> None:
        v = batch[0].data["v"]
        if v not in failed:
            failed.add(v)
            raise Poisoned(f"first delivery of v={v}")

    rec = Recorder(once)
    ref = await wal_reader.subscribe(
        rec,
        module_dsn,
        slot,
        [pub],
        {
            "slot_type": "persistent",
            "restart_backoff": FAST_BACKOFF,
            "on_failure": {"policy": "stop", "max_attempts": 2},
        },
    )
    try:
        await execute(module_dsn, f"INSERT INTO {table} (v) VALUES (1)")
        await rec.wait_changes(1, within=20)
        await execute(module_dsn, f"INSERT INTO {table} (v) VALUES (2)")
        await rec.wait_changes(2, within=20)
        assert [c.data["v"] for c in rec.changes] == [1, 2] and ref.error is None
        assert ref.state.failures.attempts == 0
    finally:
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)


@pytest.mark.parametrize(
    "on_failure",
    [
        "park",  # no pool
        {"policy": "drop"},
        {"policy": "stop", "max_attempts": 0},
        {"policy": "park", "pool": "dl", "table": "x; DROP TABLE y"},
        {"policy": "stop", "attempts": 3},
    ],
)
def test_bad_failure_policies_are_refused_naming_the_option(on_failure: Any) -> None:
    with pytest.raises(InvalidOptions, match="on_failure"):
        wal_reader.ReaderOptions.coerce({"on_failure": on_failure})
