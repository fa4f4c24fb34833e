"""Chaos in one process: the handler raises, the reader is killed, the walsender is terminated.

A randomized (seeded) workload commits transactions while crashes are injected;
afterwards every committed row must have been delivered, in commit order, with
duplicates only from redelivery of the unacknowledged tail.
"""

from __future__ import annotations

import random
from typing import Any

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
    walsender_pid,
)

from otpy import Ref
from otpy.pg import wal_reader

FAST = {"initial": 0.02, "maximum": 0.2}


@pytest.fixture(scope="module")
def ev(module_dsn: str) -> str:
    return published_table(module_dsn, "ev", "id bigserial PRIMARY KEY, v int")


@pytest.mark.parametrize("seed", [1, 2])
async def test_no_change_lost_under_crashes(
    module_dsn: str, ev: str, readers: Ref, seed: int
) -> None:
    rng = random.Random(seed)
    failures = 0

    def maybe_fail(batch: Any) -> None:
        nonlocal failures
        if rng.random() < 0.03:
            failures += 1
            raise RuntimeError("injected handler failure")

    rec = Recorder(maybe_fail)
    slot = unique("chaos")
    await execute(module_dsn, "TRUNCATE ev")
    ref = await wal_reader.subscribe(
        rec,
        module_dsn,
        slot,
        [ev],
        {"slot_type": "persistent", "max_batch_size": 50, "restart_backoff": FAST},
    )
    injected: list[str] = []

    async def inject(done: trio.Event) -> None:
        kinds = ["walsender", "reader"] * 3
        rng.shuffle(kinds)
        for kind in kinds:
            target = len(rec.batches) + rng.randint(5, 30)
            await rec.wait_for(lambda t=target: len(rec.batches) >= t or done.is_set(), 60)
            if done.is_set():
                return
            if kind == "walsender":
                pid = await walsender_pid(module_dsn, slot)
                if pid is not None:
                    await execute(module_dsn, f"SELECT pg_terminate_backend({pid})")
                    injected.append(kind)
            else:
                reader = ref.reader()
                if reader is not None:
                    reader.kill()  # a crash of the reader actor itself (no terminate)
                    injected.append(kind)

    try:
        async with trio.open_nursery() as nursery:
            done = trio.Event()
            nursery.start_soon(inject, done)
            await run_workload(module_dsn, "ev", 300, rng)
            committed = [r[0] for r in await query(module_dsn, "SELECT id FROM ev ORDER BY id")]
            await rec.wait_for(lambda: set(committed) <= _ids(rec), 60)
            done.set()
            rec._wake()
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, f"SELECT pg_drop_replication_slot('{slot}')")
    delivered = [c.data["id"] for c in rec.changes]
    check_delivery(delivered, committed)
    assert injected and failures, (injected, failures)
    # Every handler failure ended a stream with a stop callback, unless the reader
    # was killed while stopping (a killed reader runs no terminate).
    assert len(rec.stops) >= failures - injected.count("reader")


def _ids(rec: Recorder) -> set[int]:
    return {c.data["id"] for c in rec.changes}
