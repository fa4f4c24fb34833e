"""A reader process for the SIGKILL test: ``python reader_proc.py DSN SLOT PUB OUTFILE``.

It subscribes a persistent slot (standby, so it waits while the walsender of a
killed predecessor still holds the slot), appends every delivered row id to
OUTFILE and makes it durable *before* returning from the handler, then prints
one line per batch on stdout so the test can follow without polling.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import trio

from otpy import DynamicSupervisor
from otpy import start as start_actor
from otpy.pg import wal_reader


class FileHandler(wal_reader.ReplicationHandler):
    def __init__(self, path: str) -> None:
        self.file = open(path, "a", encoding="ascii")  # noqa: SIM115 - lives as long as the process

    async def handle_replication_data(self, ref: Any, changes: wal_reader.ChangeBatch) -> None:
        self.file.write("".join(f"{c.data['id']}\n" for c in changes))
        self.file.flush()
        os.fsync(self.file.fileno())
        print("batch", flush=True)


async def main(dsn: str, slot: str, publication: str, path: str) -> None:
    async with trio.open_nursery() as nursery:
        await start_actor(nursery, DynamicSupervisor(), name=wal_reader.READERS_SUPERVISOR)
        ref = await wal_reader.subscribe(
            FileHandler(path),
            dsn,
            slot,
            [publication],
            {
                "slot_type": "persistent",
                "standby": True,
                "max_batch_size": 50,
                "restart_backoff": {"initial": 0.02, "maximum": 0.2},
            },
        )
        await ref.wait_streaming()
        print("ready", flush=True)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:5])
