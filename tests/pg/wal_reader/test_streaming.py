"""Streaming of large in-progress transactions (protocol 2): delivered at commit, aborts dropped."""

from __future__ import annotations

import pytest
from psycopg.conninfo import make_conninfo
from wr_helpers import Recorder, execute, published_table, query, unique

from otpy import Ref
from otpy.pg import wal_reader


@pytest.fixture(scope="module")
def st(module_dsn: str) -> str:
    return published_table(module_dsn, "st", "id int PRIMARY KEY, pad text")


async def test_streamed_transactions(module_dsn: str, st: str, readers: Ref) -> None:
    # A tiny logical_decoding_work_mem for the walsender makes the server stream.
    dsn = make_conninfo(module_dsn, options="-c logical_decoding_work_mem=64kB")
    slot = unique("stream")
    rec = Recorder()
    ref = await wal_reader.subscribe(
        rec, dsn, slot, [st], {"streaming": True, "max_batch_size": 1000}
    )
    pad = "repeat('p', 100)"
    try:
        await execute(
            module_dsn,
            f"INSERT INTO st SELECT g, {pad} FROM generate_series(1, 2500) g",
            f"BEGIN; INSERT INTO st SELECT g, {pad} FROM generate_series(10001, 13000) g; ROLLBACK",
            f"BEGIN; INSERT INTO st SELECT g, {pad} FROM generate_series(20001, 22000) g; "
            f"SAVEPOINT s; INSERT INTO st SELECT g, {pad} FROM generate_series(30001, 32000) g; "
            "ROLLBACK TO SAVEPOINT s; INSERT INTO st VALUES (40000, 'x'); COMMIT",
            "INSERT INTO st VALUES (50000, 'small')",
        )
        await rec.wait_for(lambda: sum(b.final for b in rec.batches) >= 3)
        stats = await query(
            module_dsn,
            "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = %s",
            [slot],
        )
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, "TRUNCATE st")
    assert stats and stats[0][0] >= 2, "the server did not stream: the test proves nothing"
    transactions: list[list[int]] = [[]]
    for batch in rec.batches:
        transactions[-1] += [c.data["id"] for c in batch]
        assert len(batch) <= 1000
        if batch.final:
            transactions.append([])
    assert transactions[:-1] == [
        list(range(1, 2501)),
        [*range(20001, 22001), 40000],
        [50000],
    ]
    assert [len(b) for b in rec.batches][:3] == [1000, 1000, 500]
    xids = {c.xid for c in rec.batches[0]} | {c.xid for c in rec.batches[2]}
    assert len(xids) == 1 and rec.batches[2].final and not rec.batches[0].final
