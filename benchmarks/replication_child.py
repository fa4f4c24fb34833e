"""One otpy reader run in another interpreter: the ``--baseline`` contender of the benchmarks.

``PYTHON replication_child.py DSN SLOT PUBLICATION ROWS BINARY READ`` streams
the slot with whatever otpy ``PYTHON`` imports (e.g. an install of an earlier
commit), with a handler that reads every value (``READ`` = ``all``) or the key
only (``key``), and prints ``seconds cpu_seconds rows``.  It imports nothing
from this checkout, so that the two versions run side by side in one
benchmark.
"""

import sys
import time

import trio

from otpy import DynamicSupervisor
from otpy import start as start_actor
from otpy.pg import wal_reader


class Handler(wal_reader.ReplicationHandler):
    def __init__(self, expected, read):
        self.expected = expected
        self.read = read
        self.rows = 0
        self.done = trio.Event()

    async def handle_replication_data(self, ref, changes):
        for change in changes:
            if change.data is not None:
                if self.read == "all":
                    for _value in change.data.values():
                        pass
                else:
                    change.data["id"]
        self.rows += len(changes)
        if self.rows >= self.expected:
            self.done.set()


def main(dsn, slot, publication, rows, binary, read):
    handler = Handler(int(rows), read)
    options = {"slot_type": "persistent", "binary": binary == "1"}
    cpu = time.process_time()

    async def run():
        async with trio.open_nursery() as nursery:
            await start_actor(nursery, DynamicSupervisor(), name=wal_reader.READERS_SUPERVISOR)
            start = time.perf_counter()
            ref = await wal_reader.subscribe(handler, dsn, slot, [publication], options)
            await handler.done.wait()
            elapsed = time.perf_counter() - start
            await wal_reader.unsubscribe(ref)
            nursery.cancel_scope.cancel()
        return elapsed

    elapsed = trio.run(run)
    print(f"{elapsed:.6f} {time.process_time() - cpu:.6f} {handler.rows}")


if __name__ == "__main__":
    main(*sys.argv[1:7])
