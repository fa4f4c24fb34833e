"""SIGKILL of the whole Python process running a reader, during a workload: 0 lost."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from wr_helpers import (
    check_delivery,
    drop_slot_when_free,
    published_table,
    query,
    run_workload,
    unique,
)

SCRIPT = Path(__file__).with_name("reader_proc.py")


@pytest.fixture(scope="module")
def pk(module_dsn: str) -> str:
    return published_table(module_dsn, "pk", "id bigserial PRIMARY KEY, v int")


class ReaderProcess:
    """The child process, with its stdout read line by line (events, not polling)."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.buffer = b""
        self.batches = 0

    async def line(self) -> bytes:
        assert self.process.stdout is not None
        while b"\n" not in self.buffer:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                raise EOFError("reader process exited")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        if line == b"batch":
            self.batches += 1
        return line


async def spawn(dsn: str, slot: str, pub: str, out: Path) -> ReaderProcess:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(SCRIPT), dsn, slot, pub, str(out)],
        stdout=subprocess.PIPE,
        cwd=str(Path(__file__).parents[3]),
    )
    child = ReaderProcess(process)
    with trio.fail_after(30):
        while await child.line() != b"ready":
            pass
    return child


async def test_sigkill_of_the_reader_process_loses_nothing(
    module_dsn: str, pk: str, tmp_path: Path
) -> None:
    rng = random.Random(7)
    slot = unique("sigkill")
    out = tmp_path / "delivered.txt"
    kills = 0
    overlapped = 0
    child = await spawn(module_dsn, slot, pk, out)
    try:
        async with trio.open_nursery() as nursery:
            finished = trio.Event()

            async def writer() -> None:
                await run_workload(module_dsn, "pk", 1000, rng)
                finished.set()

            nursery.start_soon(writer)
            while kills < 3:
                target = child.batches + rng.randint(5, 25)
                with trio.fail_after(60):
                    while child.batches < target:
                        await child.line()
                overlapped += not finished.is_set()
                child.process.send_signal(signal.SIGKILL)
                await child.process.wait()
                kills += 1
                child = await spawn(module_dsn, slot, pk, out)
            await finished.wait()
        committed = [r[0] for r in await query(module_dsn, "SELECT id FROM pk ORDER BY id")]

        def delivered() -> list[int]:
            text = out.read_text()
            return [int(x) for x in text[: text.rfind("\n") + 1].split()]

        with trio.fail_after(60):
            while not set(committed) <= set(delivered()):
                await child.line()
    finally:
        child.process.kill()
        await child.process.wait()
        await drop_slot_when_free(module_dsn, slot)
    assert kills == 3 and overlapped >= 1, (kills, overlapped)
    check_delivery(delivered(), committed)
