"""``otpy demo``: the whole connector at work on a throw-away (or given) PostgreSQL.

It is the README's main command and a tour of what otpy does:

1. starts an embedded PostgreSQL (unless ``--dsn`` is given) and creates an
   ``otpy_demo`` schema with ``orders`` and ``inventory`` tables and one
   publication each (``order_events``, ``inventory_changes``), as in the
   original epg_connector README's ``order_sync`` example;
2. starts the connector application with a pool for that database;
3. subscribes an ``order_sync``-style handler to both publications;
4. runs a workload generator through the pool (inserts, updates, deletes,
   some transactions with several statements) and prints every decoded change
   as it arrives, with pool statistics every few seconds;
5. on ``--seconds`` or Ctrl-C it stops the workload, waits for the reader to
   catch up, and checks that every committed change was delivered.
"""

from __future__ import annotations

import random
import signal
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import attrs
import trio

import otpy
from otpy.cli.logs import mark_started
from otpy.cli.render import format_change
from otpy.cli.stopping import LineOutput, until_stopped
from otpy.pg import pool, wal_reader
from otpy.pg.app import connector_application
from otpy.pg.config import ConnectorConfig, DatabaseConfig, PoolConfig
from otpy.pg.connection import TrioConnection
from otpy.pg.replication.changes import Change, ChangeBatch

__all__ = ["DemoResult", "OrderSync", "run_demo"]

SCHEMA = "otpy_demo"
PUBLICATIONS = ("otpy_demo_order_events", "otpy_demo_inventory_changes")
SLOT = "otpy_demo_slot"
POOL = "demo_pool"

_SETUP = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.orders (
    id bigserial PRIMARY KEY,
    customer_id int NOT NULL,
    total_amount numeric(10, 2) NOT NULL,
    status text NOT NULL DEFAULT 'new',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {SCHEMA}.inventory (sku text PRIMARY KEY, quantity int NOT NULL);
DROP PUBLICATION IF EXISTS {PUBLICATIONS[0]};
DROP PUBLICATION IF EXISTS {PUBLICATIONS[1]};
CREATE PUBLICATION {PUBLICATIONS[0]} FOR TABLE {SCHEMA}.orders;
CREATE PUBLICATION {PUBLICATIONS[1]} FOR TABLE {SCHEMA}.inventory;
"""

_SKUS = ("apple", "pear", "plum", "fig")


def _event(change: Change) -> dict[str, Any]:
    """order_sync's ``transform_change``, in Python: a change becomes a business event."""
    match change:
        case Change("orders", "insert", order, _):
            return {
                "event": "order_created",
                "order_id": order["id"],
                "amount": order["total_amount"],
            }
        case Change("orders", "update", order, _):
            return {"event": "order_updated", "order_id": order["id"], "status": order["status"]}
        case Change("inventory", op, data, _):
            return {"event": "inventory_change", "operation": op, "sku": (data or {}).get("sku")}
        case Change(table, op, _, _):
            return {"event": "generic_change", "table": table, "operation": op}
    raise AssertionError("unreachable")  # pragma: no cover


class OrderSync(wal_reader.ReplicationHandler):
    """The original README's ``order_sync`` handler: print each change and count events.

    Printing is best effort (``otpy demo | head`` closes the output): the count
    is what the final check needs.
    """

    def __init__(self, out: TextIO | LineOutput) -> None:
        self.output = out if isinstance(out, LineOutput) else LineOutput(out)
        self.events: list[dict[str, Any]] = []
        self.changed = trio.Event()

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        for change in changes:
            self.events.append(_event(change))
        self.output.print(*(f"  change  {format_change(change)}" for change in changes))
        self.changed.set()
        self.changed = trio.Event()

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        self.output.print(f"  replication of {slot_name} stopped")


@attrs.frozen
class DemoResult:
    """What the demo committed and what its handler received."""

    committed: int
    """Changes committed by the workload."""
    delivered: int
    """Changes the replication handler received."""
    signal: int | None = None
    """The signal that stopped the demo (SIGINT, SIGTERM), if one did."""
    output_closed: bool = False
    """Whether it stopped because nobody read its output any more."""

    @property
    def lost(self) -> int:
        """Committed changes that never reached the handler (0, or the demo failed)."""
        return max(0, self.committed - self.delivered)


def _config(dsn: str) -> ConnectorConfig:
    database = attrs.evolve(DatabaseConfig.from_dsn("demo_db", dsn), application_name="otpy_demo")
    demo_pool = PoolConfig(name=POOL, database="demo_db", min_size=2, max_size=4)
    return ConnectorConfig(databases={"demo_db": database}, pools={POOL: demo_pool})


def _workload(rng: random.Random) -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    """Endless transactions (lists of statements); each statement changes exactly one row."""
    order_ids: list[int] = []
    next_id = 1
    while True:
        roll = rng.random()
        if roll < 0.45 or not order_ids:
            amount = round(rng.uniform(5, 500), 2)
            statements = [
                (
                    f"INSERT INTO {SCHEMA}.orders (id, customer_id, total_amount) "
                    "VALUES (%s, %s, %s)",
                    (next_id, rng.randint(1, 50), amount),
                ),
                (
                    f"INSERT INTO {SCHEMA}.inventory VALUES (%s, 100) ON CONFLICT (sku) "
                    "DO UPDATE SET quantity = inventory.quantity - 1",
                    (rng.choice(_SKUS),),
                ),
            ]
            order_ids.append(next_id)
            next_id += 1
            yield statements  # an order and its stock change, in one transaction
        elif roll < 0.85:
            status = rng.choice(("paid", "shipped", "delivered"))
            order = rng.choice(order_ids)
            yield [(f"UPDATE {SCHEMA}.orders SET status = %s WHERE id = %s", (status, order))]
        else:
            order = order_ids.pop(rng.randrange(len(order_ids)))
            yield [(f"DELETE FROM {SCHEMA}.orders WHERE id = %s", (order,))]


def _stats_line() -> str:
    s = pool.stats(POOL)
    wait = s.wait_time_max * 1000
    return (
        f"  pool    {POOL}: size {s.size} (idle {s.idle}, in use {s.in_use}), waiting {s.waiting}, "
        f"checkouts {s.checkouts}, longest wait {wait:.1f} ms, errors {s.connection_errors}"
    )


async def run_demo(
    dsn: str,
    *,
    seconds: float | None,
    rate: float = 10.0,
    out: TextIO | None = None,
    seed: int | None = None,
) -> DemoResult:
    """Run the demo against ``dsn`` for ``seconds`` (None: until SIGINT/SIGTERM).

    Output goes to ``out`` (default: the current ``sys.stdout``); the demo also
    stops when nobody reads it any more (``| head``).
    """
    output = LineOutput(sys.stdout if out is None else out)
    async with await TrioConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(_SETUP)
    output.print(f"demo: schema {SCHEMA} with orders and inventory, publications created")
    handler = OrderSync(output)
    committed = 0
    app = connector_application(_config(dsn))
    async with otpy.start_application(app):
        sub = await wal_reader.subscribe(handler, dsn, SLOT, list(PUBLICATIONS))
        mark_started()
        output.print(f"demo: reading slot {SLOT}; workload of {rate:g} transactions/s")
        rng = random.Random(seed)

        async def workload() -> None:
            nonlocal committed
            async with trio.open_nursery() as nursery:

                async def show_stats() -> None:
                    while True:
                        await trio.sleep(3)
                        output.print(_stats_line())

                nursery.start_soon(show_stats)
                for statements in _workload(rng):
                    # Shielded, so that a stop lands between transactions and
                    # `committed` is exact: the final check compares it with
                    # what the handler received.
                    with trio.CancelScope(shield=True):
                        async with pool.transaction(POOL) as tx:
                            for sql, params in statements:
                                await tx.execute(sql, params)
                        committed += len(statements)
                    await trio.sleep(rng.expovariate(rate))

        def stopping(signum: int) -> None:
            output.print(f"demo: stopping ({signal.Signals(signum).name})")

        stopped_by = await until_stopped(
            workload, seconds=seconds, on_signal=stopping, output=output
        )
        # Nothing is lost: wait (bounded) until the handler has every committed change.
        with trio.move_on_after(15):
            while len(handler.events) < committed:
                await handler.changed.wait()
        output.print(_stats_line())
        await wal_reader.unsubscribe(sub)
    result = DemoResult(
        committed=committed,
        delivered=len(handler.events),
        signal=stopped_by,
        output_closed=output.closed.is_set(),
    )
    output.print(
        f"demo: committed {result.committed} changes, the handler received "
        f"{result.delivered}: {result.lost} lost"
    )
    return result
