"""Chaos: SIGKILL of the whole applier process, during a workload: 0 lost, 0 duplicated.

The process dies at any point: inside the target transaction, between the
target commit and the acknowledgement, with a large transaction half
applied.  A fresh process (new pool, new reader, same origin) takes over.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from eo_helpers import counts
from wr_helpers import drop_slot_when_free, execute, published_table, query, run_workload, unique

from otpy.pg.connection import TrioConnection
from otpy.pg.wal_reader import dead_letters

SCRIPT = Path(__file__).with_name("applier_proc.py")


@pytest.fixture(scope="module")
def src(module_dsn: str) -> str:
    return published_table(module_dsn, "src", "id bigserial PRIMARY KEY, v int")


class Applier:
    """The child process, with its stdout read line by line (events, not polling)."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.buffer = b""
        self.batches = 0
        self.highest = 0

    async def line(self) -> bytes:
        assert self.process.stdout is not None
        while b"\n" not in self.buffer:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                raise EOFError("applier process exited")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        if line.startswith(b"batch"):
            self.batches += 1
            self.highest = max(self.highest, int(line.split()[1]))
        return line


async def spawn(args: list[str]) -> Applier:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        cwd=str(Path(__file__).parents[3]),
    )
    child = Applier(process)
    with trio.fail_after(30):
        while await child.line() != b"ready":
            pass
    return child


async def test_sigkill_of_the_applier_process_neither_loses_nor_duplicates(
    module_dsn: str, target_dsn: str, src: str
) -> None:
    rng = random.Random(7)
    await execute(target_dsn, "CREATE TABLE dst (id bigint, v int)")
    slot = unique("sigkill")
    args = [module_dsn, target_dsn, slot, src, unique("sigkill_origin")]
    kills = 0
    child = await spawn(args)
    try:
        async with trio.open_nursery() as nursery:
            finished = trio.Event()

            async def writer() -> None:
                await run_workload(module_dsn, "src", 1000, rng)
                finished.set()

            nursery.start_soon(writer)
            while kills < 3:
                target = child.batches + rng.randint(5, 25)
                with trio.fail_after(90):
                    while child.batches < target:
                        await child.line()
                child.process.send_signal(signal.SIGKILL)
                await child.process.wait()
                kills += 1
                child = await spawn(args)
            await finished.wait()
        last = (await query(module_dsn, "SELECT max(id) FROM src"))[0][0]
        with trio.fail_after(90):
            while child.highest < last:
                await child.line()
    finally:
        child.process.kill()
        await child.process.wait()
        await drop_slot_when_free(module_dsn, slot)
    result = await counts(module_dsn, target_dsn)
    print(f"chaos process kills: {result}")
    assert kills == 3
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["unknown"] == 0, result
    assert result["applied"] == result["committed"] > 0


async def test_sigkill_while_parking_a_chunked_transaction_loses_nothing(
    module_dsn: str, target_dsn: str, src: str
) -> None:
    """Poison transactions of 8 chunks are parked; the applier dies while it writes them.

    Every committed row ends up exactly once, either applied in ``dst`` or in
    a complete dead letter; an exactly-once handler applies no chunk of a
    parked transaction (its target transaction rolled back), so each dead
    letter must hold the *whole* transaction.
    """
    await execute(module_dsn, "TRUNCATE src")
    await execute(target_dsn, "DROP TABLE IF EXISTS dst", "CREATE TABLE dst (id bigint, v int)")
    slot, letters = unique("parkkill"), unique("parkkill_dl")
    args = [module_dsn, target_dsn, slot, src, unique("parkkill_origin"), letters]
    poison_transactions, kills, cut_short = 4, 0, 0
    child = await spawn(args)
    try:
        for _ in range(poison_transactions):
            await execute(module_dsn, "INSERT INTO src (v) SELECT g FROM generate_series(1, 30) g")
            # 400 rows, 8 chunks of 50; the poison row comes last.
            await execute(
                module_dsn,
                "INSERT INTO src (v) SELECT CASE WHEN g = 400 THEN -1 ELSE g END "
                "FROM generate_series(1, 400) g",
            )
        await execute(module_dsn, "INSERT INTO src (v) VALUES (1)")
        last = (await query(module_dsn, "SELECT max(id) FROM src"))[0][0]
        while kills < 2:  # die right after a parking began: its later chunks are unwritten
            with trio.fail_after(120):
                while await child.line() != b"parked":
                    pass
            child.process.send_signal(signal.SIGKILL)
            await child.process.wait()
            kills += 1
            incomplete = await query(
                target_dsn, f"SELECT count(*) FROM {letters} WHERE NOT complete"
            )
            cut_short += incomplete[0][0]
            child = await spawn(args)
        with trio.fail_after(120):
            while child.highest < last:
                await child.line()
    finally:
        child.process.kill()
        await child.process.wait()
        await drop_slot_when_free(module_dsn, slot)
    committed = {r[0] for r in await query(module_dsn, "SELECT id FROM src")}
    applied = [r[0] for r in await query(target_dsn, "SELECT id FROM dst")]
    async with await TrioConnection.connect(target_dsn, autocommit=True) as conn:
        parked = await dead_letters.list_parked(conn, slot=slot, table=letters)
    parked_ids = [c.data["id"] for letter in parked for c in letter.changes]
    print(f"parking kills: {kills}, cut short {cut_short}, letters {len(parked)}")
    assert cut_short >= 1, "no kill landed while a transaction was being parked"
    assert len(parked) == poison_transactions
    assert all(letter.complete and letter.first_chunk == 0 for letter in parked)
    assert all(len(letter.changes) == 400 for letter in parked)
    assert len(applied) == len(set(applied)), "duplicates in the target"
    assert len(parked_ids) == len(set(parked_ids)), "a change parked twice"
    assert not set(applied) & set(parked_ids), "a change both applied and parked"
    assert set(applied) | set(parked_ids) == committed, "changes lost"
