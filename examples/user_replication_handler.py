"""The ``user_replication_handler`` of the epg_connector README, ported to otpy.

The Erlang behaviour module becomes a :class:`ReplicationHandler` subclass, its
function clauses a ``match`` on :class:`Change`, which has the same shape as
Erlang's ``{Table, Op, Data, OldData}`` tuple::

    process_change({<<"users">>, insert, UserData, _}) -> logger:info("New user created: ~p", ...);
    process_change({<<"users">>, update, UserData, _OldUserData}) -> ...;
    process_change({<<"users">>, delete, UserData, _}) -> ...;
    process_change({TableName, Operation, Data, _OldData}) -> ...

``handle_replication_data`` is awaited once per committed transaction, in
commit order; returning acknowledges it, raising makes the reader restart and
(on a persistent slot) deliver the transaction again.  Subscribing takes the
same arguments as ``epg_wal_reader:subscribe/5``.

The demo creates ``users`` and ``user_logins`` in one publication,
``user_changes``, subscribes with a temporary slot, then inserts, updates and
deletes users through a pool and lets the handler log what arrives.

Run: ``otpy run user_replication_handler:app --config examples.toml`` from
``examples/``, or ``python examples/user_replication_handler.py [--dsn DSN] [--seconds N]``
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import trio

import otpy
from otpy.pg import pool, wal_reader
from otpy.pg.app import connector_application
from otpy.pg.wal_reader import Change, ChangeBatch

import _demo

logger = logging.getLogger(__name__)


class UserReplicationHandler(wal_reader.ReplicationHandler):
    """Logs every change to the users (and anything else the publication carries)."""

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        for change in changes:
            process_change(change)

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        logger.info("Replication stopped for slot: %s", slot_name)


def process_change(change: Change) -> None:
    """One change, dispatched on (table, operation) like the Erlang function clauses."""
    match change:
        case Change("users", "insert", user, _):
            logger.info("New user created: %s", user)
        case Change("users", "update", user, _old_user):
            logger.info("User updated: %s", user)
        case Change("users", "delete", user, _):
            logger.info("User deleted: %s", user)
        case Change(table, op, data, _old):
            logger.info("Change in table %s: %s %s", table, op, data)


# --------------------------------------------------------------------------- the demo

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL
);
CREATE TABLE IF NOT EXISTS user_logins (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users ON DELETE CASCADE,
    at timestamptz NOT NULL DEFAULT now()
);
-- FULL: updates carry the old row and deletes the whole row, not just the key.
ALTER TABLE users REPLICA IDENTITY FULL;
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'user_changes') THEN
        CREATE PUBLICATION user_changes FOR TABLE users, user_logins;
    END IF;
END $$;
"""


class _Recording(UserReplicationHandler):
    """The handler above, also keeping what it saw so that ``main`` can wait for it."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self._handled = trio.Event()

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        await super().handle_replication_data(ref, changes)
        self.changes.extend(changes)
        self._handled.set()
        self._handled = trio.Event()

    async def wait_until(self, predicate: Callable[[list[Change]], bool]) -> None:
        while not predicate(self.changes):
            await self._handled.wait()


async def user_lifecycle(n: int) -> int:
    """Sign a user up, log them in, change their email, delete them; return their id."""
    result = await pool.query(
        "main_pool",
        "INSERT INTO users (name, email) VALUES (%s, %s) RETURNING id",
        (f"user{n}", f"user{n}@example.com"),
    )
    user_id = int(result.scalar())
    await pool.query("main_pool", "INSERT INTO user_logins (user_id) VALUES (%s)", (user_id,))
    await pool.query(
        "main_pool", "UPDATE users SET email = %s WHERE id = %s", (f"u{n}@example.org", user_id)
    )
    await pool.query("main_pool", "DELETE FROM users WHERE id = %s", (user_id,))  # + its logins
    return user_id


async def demo(db_opts: Any, seconds: float = 0.0) -> list[Change]:
    """With the pool running: subscribe the handler, run user lifecycles, return the changes.

    One lifecycle, or one every half second for ``seconds``; then wait until
    the handler has seen the last one and unsubscribe.
    """
    async with pool.connection("main_pool") as conn:
        await conn.execute(SCHEMA)

    # epg_wal_reader:subscribe(Module, DbOpts, Slot, Publications, Options).  DbOpts
    # may be a mapping as in Erlang (a "replication" key is not needed: the reader
    # opens its replication connection itself), a DSN, or a configured database name.
    handler = _Recording()
    ref = await wal_reader.subscribe(
        handler, db_opts, "myapp_slot", ["user_changes"], {"slot_type": "temporary"}
    )

    last_user = await user_lifecycle(1)
    end = trio.current_time() + seconds
    for n in itertools.count(2):
        if trio.current_time() >= end:
            break
        await trio.sleep(0.5)  # a gentle pace, so that the log stays readable
        last_user = await user_lifecycle(n)

    # Changes arrive in commit order: once the last delete is there, all are.
    def last_delete_arrived(changes: list[Change]) -> bool:
        return any(
            c.table == "users" and c.op == "delete" and c.data["id"] == last_user for c in changes
        )

    with trio.fail_after(30):
        await handler.wait_until(last_delete_arrived)
    await wal_reader.unsubscribe(ref)  # the temporary slot goes with the session
    return handler.changes


async def main(dsn: str, seconds: float = 0.0) -> list[Change]:
    """Start the connector on ``dsn``, then run :func:`demo` (DbOpts as a mapping)."""
    config = _demo.connector_config(dsn, {"main_pool": {"database": "main_db", "size": 2}})
    async with otpy.start_application(connector_application(config)):
        return await demo(_demo.database_settings(dsn), seconds)


#: ``otpy run user_replication_handler:app --config examples.toml`` (from
#: examples/): the reader connects to the file's ``main_db``; ``seconds`` comes
#: from ``[env.user_replication_handler]``.
app = _demo.application(
    "user_replication_handler",
    lambda env: demo("main_db", float(env["seconds"])),
    env={"seconds": 0.0},
)


if __name__ == "__main__":
    _demo.setup_logging(__name__)
    parser = _demo.parser(__doc__)
    parser.add_argument("--seconds", type=float, default=0.0, help="keep the workload going")
    args = parser.parse_args()
    with _demo.database(args.dsn) as dsn:
        trio.run(main, dsn, args.seconds)
