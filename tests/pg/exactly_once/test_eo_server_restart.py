"""Chaos: PostgreSQL restarts (immediate and fast) under an exactly-once copy: 0 lost, 0 duplicated.

Source and target are databases of the same server, so each restart takes
down the reader, its walsender and the target pool's connections at once,
possibly between the target commit and the acknowledgement.  Kept in a
module of its own: it stops and starts the session's server.
"""

from __future__ import annotations

import random

import pytest
import trio
from eo_helpers import FAST, Copier, counts, wait_applied
from wr_helpers import drop_slot, execute, published_table, run_workload, unique

from otpy import Ref
from otpy.pg import pool, wal_reader
from otpy.pg.testing import PostgresServer


@pytest.fixture(scope="module")
def src(module_dsn: str) -> str:
    return published_table(module_dsn, "src", "id bigserial PRIMARY KEY, v int")


async def test_server_restarts_neither_lose_nor_duplicate_a_change(
    module_dsn: str,
    target_dsn: str,
    src: str,
    target_pool: pool.Pool,
    readers: Ref,
    own_server: PostgresServer,
) -> None:
    rng = random.Random(11)
    await execute(target_dsn, "CREATE TABLE dst (id bigint, v int)")
    copier = Copier("target", unique("restart"))
    slot = unique("restart")
    ref = await wal_reader.subscribe(
        copier,
        module_dsn,
        slot,
        [src],
        {"slot_type": "persistent", "max_batch_size": 50, "restart_backoff": FAST},
    )
    writer_errors: list[int] = []

    async def writer() -> None:
        writer_errors.append(await run_workload(module_dsn, "src", 1500, rng, retry=True))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            for mode in ("immediate", "fast"):
                starts = ref.state.starts
                target = len(copier.batches) + rng.randint(10, 30)
                await copier.wait_for(lambda t=target: len(copier.batches) >= t, 90)
                try:
                    await trio.to_thread.run_sync(lambda m=mode: own_server.stop(mode=m))
                finally:
                    await trio.to_thread.run_sync(own_server.start)
                with trio.fail_after(90):
                    await ref.wait_streaming(starts + 1)
        await wait_applied(copier, module_dsn, target_dsn)
    finally:
        if not own_server.running:
            own_server.start()
        await wal_reader.unsubscribe(ref)
        drop_slot(module_dsn, slot)
    result = await counts(module_dsn, target_dsn)
    print(f"chaos server restarts: {result}")
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["unknown"] == 0, result
    assert result["applied"] == result["committed"] > 0
    assert writer_errors[0] >= 1, "the restarts did not overlap the workload"
