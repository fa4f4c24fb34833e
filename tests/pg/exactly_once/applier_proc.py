"""An exactly-once applier process for the SIGKILL test.

``python applier_proc.py SOURCE_DSN TARGET_DSN SLOT PUBLICATION ORIGIN [DEAD_LETTERS]``:
opens pool ``target``, subscribes a persistent slot (standby, so it waits while
the walsender of a killed predecessor still holds the slot) with a copier into
``dst``, and prints one line per handled batch (``batch <max id>``) so the
test can follow without polling.

With ``DEAD_LETTERS`` (a table in the target), a change with ``v < 0`` is
poison: the copier raises on it, the reader parks its transaction after two
attempts (``on_failure = park``), and the process prints ``parked`` when the
reader logs that it parked one (its later chunks are still being written).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import trio

from otpy import DynamicSupervisor
from otpy import start as start_actor
from otpy.pg import pool, wal_reader
from otpy.pg.config import DatabaseConfig, PoolConfig
from otpy.pg.exactly_once import ExactlyOnceHandler


class Copier(ExactlyOnceHandler):
    async def apply(self, conn: Any, changes: wal_reader.ChangeBatch) -> None:
        if any(c.data["v"] < 0 for c in changes):
            raise ValueError("poison")
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO dst (id, v) VALUES (%s, %s)",
                [(c.data["id"], c.data["v"]) for c in changes],
            )

    async def handle_replication_data(self, ref: Any, changes: wal_reader.ChangeBatch) -> None:
        await super().handle_replication_data(ref, changes)
        print("batch", max(c.data["id"] for c in changes), flush=True)


class SayParked(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "replication_parked":
            print("parked", flush=True)


async def main(
    source: str, target: str, slot: str, publication: str, origin: str, letters: str = ""
) -> None:
    options: dict[str, Any] = {
        "slot_type": "persistent",
        "standby": True,
        "max_batch_size": 50,
        "restart_backoff": {"initial": 0.02, "maximum": 0.2},
    }
    if letters:
        options["on_failure"] = {
            "policy": "park",
            "max_attempts": 2,
            "pool": "target",
            "table": letters,
        }
        logging.getLogger("otpy").addHandler(SayParked())
    database = DatabaseConfig.from_dsn("target", target)
    config = PoolConfig(name="target", database="target", min_size=1, max_size=2)
    async with pool.open_pool("target", config, database), trio.open_nursery() as nursery:
        # As the connector application does (readers_supervisor_spec): restarts are paced
        # by each reader's backoff, not by the supervisor's intensity.
        readers = DynamicSupervisor(intensity=1000, period=60)
        await start_actor(nursery, readers, name=wal_reader.READERS_SUPERVISOR)
        ref = await wal_reader.subscribe(
            Copier("target", origin),
            source,
            slot,
            [publication],
            options,
        )
        await ref.wait_streaming()
        print("ready", flush=True)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:7])
