"""Every example in ``examples/`` runs and does what the README section it ports says.

The PostgreSQL examples run against this module's own database (``module_dsn``)
through their ``main`` function, and the tests check what came out: the user
found, the changes and their order, the fields of the transformed events, the
slot left (or not) behind.  A few also run as scripts, as a user would run them.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import order_sync
import pytest
import supervision_tree
import trio
import user_replication_handler
import user_service

from otpy.errors import GaveUp
from otpy.pg.connection import TrioConnection
from otpy.pg.testing import external_dsn

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# --------------------------------------------------------------------------- helpers


async def fetch(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = await TrioConnection.connect(dsn, autocommit=True)
    async with conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall()


async def slots(dsn: str) -> list[str]:
    rows = await fetch(
        dsn, "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"
    )
    return [row[0] for row in rows]


async def run_script(*args: str, timeout: float = 120) -> str:  # noqa: ASYNC109
    """Run ``python examples/<args>`` and return its combined output; fail on a non-zero exit."""
    with trio.fail_after(timeout):
        result = await trio.run_process(
            [sys.executable, *args],
            cwd=EXAMPLES.parent,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    output = result.stdout.decode()
    assert result.returncode == 0, output
    return output


# --------------------------------------------------------------------------- supervision tree


async def test_supervision_tree_restarts_by_rest_for_one_then_gives_up() -> None:
    Step = supervision_tree.Step
    with trio.fail_after(10):
        steps, reason = await supervision_tree.main()
    assert steps[:4] == [
        Step("processed 3 items", 3, frozenset()),
        # Only the worker restarted: the counter, started before it, kept its count.
        Step("worker crashed", 3, frozenset({"worker"})),
        Step("processed 1 item", 4, frozenset()),
        # The counter restarted, and the worker after it (it held the old counter's ref).
        Step("counter crashed", 0, frozenset({"counter", "worker"})),
    ]
    # Two restarts so far, intensity 3: the second crash more is one too many.
    assert steps[4].what == "gave up after 2 more crashes"
    assert isinstance(reason.error, GaveUp)


async def test_supervision_tree_script() -> None:
    output = await run_script("examples/supervision_tree.py")
    assert "child 'worker' restarted" in output
    assert "gave up" in output
    assert "Traceback" not in output  # crash reports stay one line each


# --------------------------------------------------------------------------- user_service


async def test_user_service_creates_and_finds_a_user(module_dsn: str) -> None:
    with trio.fail_after(30):
        found, missing = await user_service.main(module_dsn)
    assert found is not None
    assert (found.name, found.email) == ("Alice", "alice@example.com")
    assert missing is None  # Erlang's {error, not_found}
    rows = await fetch(module_dsn, "SELECT name, email FROM users WHERE id = %s", (found.id,))
    assert rows == [("Alice", "alice@example.com")]


async def test_user_service_script(module_dsn: str) -> None:
    output = await run_script("examples/user_service.py", "--dsn", module_dsn)
    assert "name='Alice', email='alice@example.com'" in output
    assert "get_user(-1) -> None" in output


@pytest.mark.skipif(external_dsn() is not None, reason="uses the PostgreSQL binaries")
async def test_user_service_script_brings_its_own_server() -> None:
    output = await run_script("examples/user_service.py")
    assert "starting a throw-away PostgreSQL" in output
    assert "get_user(1) -> User(id=1, name='Alice'" in output


# ----------------------------------------------------------------- user_replication_handler


async def test_user_replication_handler_logs_each_change(
    module_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=user_replication_handler.__name__)
    with trio.fail_after(60):
        changes = await user_replication_handler.main(module_dsn)

    # One user's lifecycle, in commit order; deleting the user cascades to its logins.
    assert [(c.table, c.op) for c in changes] == [
        ("users", "insert"),
        ("user_logins", "insert"),
        ("users", "update"),
        ("users", "delete"),
        ("user_logins", "delete"),
    ]
    created, login, updated, deleted, _ = changes
    user_id = created.data["id"]
    assert created.data == {"id": user_id, "name": "user1", "email": "user1@example.com"}
    assert login.data["user_id"] == user_id
    # REPLICA IDENTITY FULL: the update carries the old row, the delete the whole row.
    assert updated.old == created.data
    assert updated.data == {"id": user_id, "name": "user1", "email": "u1@example.org"}
    assert deleted.data == updated.data

    messages = [
        r.getMessage() for r in caplog.records if r.name == user_replication_handler.__name__
    ]
    assert messages == [
        f"New user created: {created.data}",
        f"Change in table user_logins: insert {login.data}",
        f"User updated: {updated.data}",
        f"User deleted: {deleted.data}",
        f"Change in table user_logins: delete {changes[4].data}",
        "Replication stopped for slot: myapp_slot",
    ]
    assert "myapp_slot" not in await slots(module_dsn)  # temporary: gone with the session


async def test_user_replication_handler_script(module_dsn: str) -> None:
    output = await run_script(
        "examples/user_replication_handler.py", "--dsn", module_dsn, "--seconds", "1"
    )
    # A lifecycle every half second for a second: at least two users came and went.
    assert output.count("New user created:") >= 2
    assert output.count("User deleted:") == output.count("New user created:")
    assert "Replication stopped for slot: myapp_slot" in output


# --------------------------------------------------------------------------- order_sync


async def test_order_sync_transforms_publishes_and_caches(module_dsn: str) -> None:
    with trio.fail_after(60):
        report = await order_sync.main(module_dsn)
    events = report.events
    assert [e["event_type"] for e in events] == [
        "order_created",  # kept order + its stock, one transaction
        "inventory_change",
        "order_created",  # cancelled order + its stock
        "inventory_change",
        "generic_change",  # the cancelled order deleted: no clause of its own
        "order_updated",
        "order_updated",
    ]
    kept, widget, cancelled, _, deleted, shipped, delivered = events
    order_id = kept["order_id"]
    assert {k: v for k, v in kept.items() if k != "timestamp"} == {
        "event_type": "order_created",
        "table": "orders",
        "order_id": order_id,
        "customer_id": 1,
        "amount": Decimal("19.90"),
    }
    assert widget["table"] == "inventory" and widget["operation"] == "update"
    assert widget["data"]["sku"] == "widget"
    assert (deleted["table"], deleted["operation"]) == ("orders", "delete")
    assert deleted["data"]["id"] == cancelled["order_id"]
    assert [(e["order_id"], e["status"]) for e in (shipped, delivered)] == [
        (order_id, "shipped"),
        (order_id, "delivered"),
    ]
    # Timestamps are commit times: shared by the changes of one transaction.
    assert all(isinstance(e["timestamp"], datetime) for e in events)
    assert kept["timestamp"] == widget["timestamp"] <= delivered["timestamp"]
    # The cancelled order left the cache; the kept one is delivered.
    assert report.cache == {order_id: "delivered"}
    assert order_sync.SLOT not in await slots(module_dsn)  # dropped without keep_slot


async def test_order_sync_persistent_slot_resumes_where_it_stopped(module_dsn: str) -> None:
    with trio.fail_after(60):
        first = await order_sync.main(module_dsn, keep_slot=True)
    assert order_sync.SLOT in await slots(module_dsn)

    # Committed while nothing reads the slot: the next run must still see it.
    rows = await fetch(
        module_dsn,
        "INSERT INTO orders (customer_id, total_amount) VALUES (42, 42.42) RETURNING id",
    )
    offline_id = rows[0][0]

    with trio.fail_after(60):
        second = await order_sync.main(module_dsn)
    created = [e["order_id"] for e in second.events if e["event_type"] == "order_created"]
    assert created[0] == offline_id  # delivered first: it was committed first
    assert second.events[0]["amount"] == Decimal("42.42")
    # Everything the first run handled was acknowledged: nothing comes twice.
    first_ids = {e["order_id"] for e in first.events if "order_id" in e}
    assert not first_ids & {e["order_id"] for e in second.events if "order_id" in e}
    assert order_sync.SLOT not in await slots(module_dsn)


async def test_order_sync_script(module_dsn: str) -> None:
    output = await run_script("examples/order_sync.py", "--dsn", module_dsn)
    assert "event_type=order_created" in output
    assert "status=delivered" in output
    assert order_sync.SLOT not in await slots(module_dsn)


# --------------------------------------------------------------------------- configuration


def test_connector_toml_is_the_readme_configuration() -> None:
    from otpy.pg.config import ConnectorConfig

    config = ConnectorConfig.from_toml(
        Path(EXAMPLES, "connector.toml"),
        environ={"MAIN_DB_PASSWORD": "secret", "READ_DB_PASSWORD": "also secret"},
    )
    assert config.pools["main_pool"].size == (20, 50)
    assert config.pools["readonly_pool"].size == 10
    assert config.database_of("readonly_pool").host == "replica.example.com"
    assert "secret" not in repr(config)
