"""PostgreSQL restarts (fast and immediate) under a persistent-slot reader: 0 lost.

Kept in a module of its own: it stops and starts the session's server.
"""

from __future__ import annotations

import random

import pytest
import trio
from wr_helpers import (
    Recorder,
    check_delivery,
    execute,
    published_table,
    query,
    run_workload,
    unique,
)

from otpy import Ref
from otpy.pg import wal_reader
from otpy.pg.testing import PostgresServer


@pytest.fixture(scope="module")
def rs(module_dsn: str) -> str:
    return published_table(module_dsn, "rs", "id bigserial PRIMARY KEY, v int")


async def test_server_restarts_lose_nothing(
    module_dsn: str, rs: str, readers: Ref, own_server: PostgresServer
) -> None:
    rng = random.Random(11)
    rec = Recorder()
    slot = unique("restart")
    ref = await wal_reader.subscribe(
        rec,
        module_dsn,
        slot,
        [rs],
        {
            "slot_type": "persistent",
            "max_batch_size": 50,
            "restart_backoff": {"initial": 0.05, "maximum": 0.5},
        },
    )
    writer_errors: list[int] = []

    async def writer() -> None:
        writer_errors.append(await run_workload(module_dsn, "rs", 1500, rng, retry=True))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            for mode in ("immediate", "fast"):
                starts = ref.state.starts
                target = len(rec.batches) + rng.randint(10, 30)
                await rec.wait_for(lambda t=target: len(rec.batches) >= t, 60)
                try:
                    await trio.to_thread.run_sync(lambda m=mode: own_server.stop(mode=m))
                finally:
                    await trio.to_thread.run_sync(own_server.start)
                with trio.fail_after(60):
                    await ref.wait_streaming(starts + 1)
        committed = [r[0] for r in await query(module_dsn, "SELECT id FROM rs ORDER BY id")]
        await rec.wait_for(lambda: set(committed) <= {c.data["id"] for c in rec.changes}, 60)
    finally:
        if not own_server.running:
            own_server.start()
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, f"SELECT pg_drop_replication_slot('{slot}')")
    check_delivery([c.data["id"] for c in rec.changes], committed)
    assert writer_errors[0] >= 1, "the restarts did not overlap the workload"
    assert rec.stops.count(slot) >= 3  # one per restart, one for unsubscribe
