"""The complete replication example of the epg_connector README (``order_sync``), ported.

Orders and inventory changes stream out of PostgreSQL through a *persistent*
slot and two publications, are turned into business events, sent to an
analytics service and folded into a cache.  The Erlang original::

    start() ->
        epg_wal_reader:subscribe({?MODULE, self()}, DbOpts, "order_replication_slot",
                                 ["order_events", "inventory_changes"], #{slot_type => persistent}).

    handle_replication_data(_Ref, Changes) ->
        ProcessedChanges = lists:map(fun transform_change/1, Changes),
        send_to_analytics_service(ProcessedChanges),
        update_cache(ProcessedChanges),
        ok.

What otpy adds to the same code:

* the analytics service is an actor of this application's supervision tree,
  and the handler ``call``s it: the transaction is acknowledged only once the
  service has the events, and if the service is down the handler raises, so
  the reader restarts and PostgreSQL delivers the transaction again;
* no reconnection logic in ``handle_replication_stop``: the reader runs under
  the connector's supervisor, which restarts it with back-off, and the
  persistent slot resumes right after the last acknowledged transaction
  (including changes committed while nothing was reading).

Run: ``otpy run order_sync:app --config examples.toml`` from ``examples/``, or
``python examples/order_sync.py [--dsn DSN] [--seconds N] [--keep-slot]``
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import attrs
import trio

import otpy
from otpy.pg import pool, wal_reader
from otpy.pg.app import connector_application
from otpy.pg.wal_reader import Change, ChangeBatch

import _demo

logger = logging.getLogger(__name__)

SLOT = "order_replication_slot"
PUBLICATIONS = ["order_events", "inventory_changes"]

#: A business event: a plain dict, like the Erlang map (ready for JSON or a queue).
Event = dict[str, Any]


def transform_change(change: Change) -> Event:
    """A row change becomes a business event (the Erlang ``transform_change/1`` clauses).

    ``timestamp`` is the transaction's commit time rather than the time of
    processing (``os:timestamp()``): it says when the change happened, and a
    redelivered transaction gets the same one.
    """
    match change:
        case Change("orders", "insert", order, _):
            return {
                "event_type": "order_created",
                "table": "orders",
                "order_id": order["id"],
                "customer_id": order["customer_id"],
                "amount": order["total_amount"],
                "timestamp": change.commit_time,
            }
        case Change("orders", "update", order, _old_order):
            return {
                "event_type": "order_updated",
                "table": "orders",
                "order_id": order["id"],
                "status": order["status"],
                "timestamp": change.commit_time,
            }
        case Change("inventory", op, data, _old):
            return {
                "event_type": "inventory_change",
                "table": "inventory",
                "operation": op,
                "data": data,
                "timestamp": change.commit_time,
            }
        case Change(table, op, data, _old):
            return {
                "event_type": "generic_change",
                "table": table,
                "operation": op,
                "data": data,
                "timestamp": change.commit_time,
            }
    raise AssertionError("unreachable: the last pattern matches every change")


class Analytics(otpy.GenServer):
    """Stands in for a remote analytics service: keeps (and logs) the events it is sent."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case ("publish", events):
                for event in events:
                    details = " ".join(f"{k}={v}" for k, v in event.items() if k != "timestamp")
                    logger.info("analytics <- %s", details)
                self.events.extend(events)
                return len(events)
            case "events":
                return list(self.events)
        return await super().handle_call(request, from_)


class OrderSync(wal_reader.ReplicationHandler):
    """The replication handler: transform, publish, cache.

    One instance serves every restart of the reader, so ``cache`` survives
    reconnections.  Every call gets one whole transaction, in commit order.
    """

    def __init__(self) -> None:
        #: order id -> current status of the orders seen so far.
        self.cache: dict[int, str] = {}
        self._handled = trio.Event()

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        processed = [transform_change(change) for change in changes]
        await self.send_to_analytics_service(processed)
        self.update_cache(processed)
        self._handled.set()
        self._handled = trio.Event()

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        # Nothing to reconnect by hand: after a crash the supervisor restarts the reader.
        # otpy also calls this on a clean unsubscribe (Erlang does not), hence info,
        # not the original's warning.
        logger.info("Replication stopped for slot: %s", slot_name)

    async def send_to_analytics_service(self, events: list[Event]) -> None:
        # A call, not a cast: if the service cannot take the events this raises,
        # nothing is acknowledged, and the transaction comes again after the restart.
        await otpy.call("analytics", ("publish", events), timeout=5.0)

    def update_cache(self, events: list[Event]) -> None:
        for event in events:
            match event:
                case {"event_type": "order_created", "order_id": order_id}:
                    self.cache[order_id] = "new"
                case {"event_type": "order_updated", "order_id": order_id, "status": status}:
                    self.cache[order_id] = status
                case {"event_type": "generic_change", "table": "orders", "operation": "delete"}:
                    self.cache.pop(event["data"]["id"], None)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, checked after each transaction (bound it)."""
        while not predicate():
            await self._handled.wait()


def application(config: Any) -> otpy.Application:
    """order_sync as an application: the connector below it, the analytics service in it."""
    return otpy.Application(
        "order_sync",
        start=lambda env: Analytics.child_spec(name="analytics"),
        dependencies=[connector_application(config)],
    )


async def start(handler: OrderSync) -> wal_reader.Subscription:
    """Subscribe ``handler`` (the Erlang ``start/0``).

    ``"main_db"`` names the database of the connector's configuration, so the
    reader connects where the pools do; a mapping or a DSN works as well.
    """
    return await wal_reader.subscribe(
        handler, "main_db", SLOT, PUBLICATIONS, {"slot_type": "persistent"}
    )


# --------------------------------------------------------------------------- the demo

# Publications must exist before the slot's starting point: created once, never
# re-created, or a persistent slot could no longer decode the WAL before them.
SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL,
    total_amount numeric(12, 2) NOT NULL,
    status text NOT NULL DEFAULT 'new'
);
CREATE TABLE IF NOT EXISTS inventory (sku text PRIMARY KEY, quantity integer NOT NULL);
INSERT INTO inventory VALUES ('widget', 1000), ('gadget', 1000) ON CONFLICT DO NOTHING;
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'order_events') THEN
        CREATE PUBLICATION order_events FOR TABLE orders;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'inventory_changes') THEN
        CREATE PUBLICATION inventory_changes FOR TABLE inventory;
    END IF;
END $$;
"""


async def place_order(customer_id: int, amount: Decimal, sku: str) -> int:
    """Insert an order and take its item from stock, atomically; return the order id.

    One transaction, so the handler gets both changes in one call.
    """
    async with pool.transaction("main_pool") as conn:
        cur = await conn.execute(
            "INSERT INTO orders (customer_id, total_amount) VALUES (%s, %s) RETURNING id",
            (customer_id, amount),
        )
        row = await cur.fetchone()
        assert row is not None
        await conn.execute("UPDATE inventory SET quantity = quantity - 1 WHERE sku = %s", (sku,))
    return int(row[0])


async def order_round(n: int) -> int:
    """Two orders: one cancelled (deleted), one shipped and delivered; return the latter's id."""
    kept = await place_order(n, Decimal("19.90") * n, "widget")
    cancelled = await place_order(n + 100, Decimal("5.00"), "gadget")
    await pool.query("main_pool", "DELETE FROM orders WHERE id = %s", (cancelled,))
    for status in ("shipped", "delivered"):
        await pool.query("main_pool", "UPDATE orders SET status = %s WHERE id = %s", (status, kept))
    return kept


@attrs.frozen
class SyncReport:
    """What one run of :func:`main` produced."""

    events: list[Event]
    """Every event the analytics service received, in commit order."""
    cache: dict[int, str]
    """The handler's cache at the end."""


async def demo(seconds: float = 0.0, keep_slot: bool = False) -> SyncReport:
    """With the pool and the analytics service running: orders placed, events synced.

    One round of orders, or one every half second for ``seconds``.  With
    ``keep_slot`` the persistent slot is left behind, so that the next run
    resumes where this one stopped; otherwise it is dropped at the end, as a
    demo must not leave a slot retaining WAL on your server.
    """
    async with pool.connection("main_pool") as conn:
        await conn.execute(SCHEMA)

    handler = OrderSync()
    subscription = await start(handler)

    last = await order_round(1)
    end = trio.current_time() + seconds
    n = 1
    while trio.current_time() < end:
        await trio.sleep(0.5)  # a gentle pace, so that the log stays readable
        n += 1
        last = await order_round(n)

    # Transactions arrive in commit order: once the last one is handled, all are.
    with trio.fail_after(30):
        await handler.wait_until(lambda: handler.cache.get(last) == "delivered")
    events: list[Event] = await otpy.call("analytics", "events")

    await wal_reader.unsubscribe(subscription)  # acknowledges all, releases the slot
    if not keep_slot:
        await pool.query("main_pool", "SELECT pg_drop_replication_slot(%s)", (SLOT,))
    stats = pool.stats("main_pool")
    logger.info(
        "main_pool: %d checkouts, %d connections opened", stats.checkouts, stats.connections_opened
    )
    return SyncReport(events, dict(handler.cache))


async def main(dsn: str, seconds: float = 0.0, keep_slot: bool = False) -> SyncReport:
    """Run :func:`application` on ``dsn`` and :func:`demo` in it."""
    config = _demo.connector_config(dsn, {"main_pool": {"database": "main_db", "size": [1, 4]}})
    async with otpy.start_application(application(config)):
        return await demo(seconds, keep_slot)


#: ``otpy run order_sync:app --config examples.toml`` (from examples/): the
#: analytics service, then :func:`demo` once; ``seconds`` and ``keep_slot``
#: come from ``[env.order_sync]``.
app = _demo.application(
    "order_sync",
    lambda env: demo(float(env["seconds"]), bool(env["keep_slot"])),
    Analytics.child_spec(name="analytics"),
    env={"seconds": 0.0, "keep_slot": False},
)


if __name__ == "__main__":
    _demo.setup_logging(__name__)
    parser = _demo.parser(__doc__)
    parser.add_argument("--seconds", type=float, default=0.0, help="keep placing orders")
    parser.add_argument(
        "--keep-slot",
        action="store_true",
        help="leave the persistent slot, so the next run resumes where this one stopped "
        f"(drop it later: SELECT pg_drop_replication_slot('{SLOT}'))",
    )
    args = parser.parse_args()
    with _demo.database(args.dsn) as dsn:
        trio.run(main, dsn, args.seconds, args.keep_slot)
