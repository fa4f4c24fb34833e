"""The ``user_service`` of the epg_connector README: pooled queries, ported to otpy.

The Erlang original::

    get_user(UserId) ->
        epg_pool:with(readonly_pool, fun(Connection) ->
            case epgsql:equery(Connection, "SELECT id, name, email FROM users WHERE id = $1",
                               [UserId]) of
                {ok, _Columns, [{Id, Name, Email}]} ->
                    {ok, #{id => Id, name => Name, email => Email}};
                {ok, _Columns, []} ->
                    {error, not_found}
            end
        end).

    create_user(Name, Email) ->
        epg_pool:query(main_pool, "INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id",
                       [Name, Email]).

``epg_pool:with`` becomes ``async with pool.connection(...)`` (the connection
goes back to the pool however the block ends, exceptions included), and
``epg_pool:query`` becomes ``await pool.query(...)``.  The pools come from the
connector application, configured like epg_connector's ``sys.config`` (see
``connector.toml`` beside this file for the README's full configuration).

Run: ``otpy run user_service:app --config examples.toml`` from ``examples/``, or
``python examples/user_service.py [--dsn DSN]``
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import trio

import otpy
from otpy.pg import pool
from otpy.pg.app import connector_application

import _demo

logger = logging.getLogger(__name__)

#: The README's two pools, smaller.  In production ``readonly_pool`` would use a
#: ``read_db`` entry pointing at a replica; the demo has one server, so both use main_db.
POOLS: dict[str, dict[str, Any]] = {
    "main_pool": {"database": "main_db", "size": [2, 5]},  # 2 stable + up to 3 on demand
    "readonly_pool": {"database": "main_db", "size": 2},
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL
)
"""


@attrs.frozen
class User:
    """A row of ``users`` (the Erlang map ``#{id, name, email}``)."""

    id: int
    name: str
    email: str


async def get_user(user_id: int) -> User | None:
    """The user with this id, or ``None`` (Erlang's ``{error, not_found}``)."""
    async with pool.connection("readonly_pool") as conn:
        cur = await conn.execute("SELECT id, name, email FROM users WHERE id = %s", (user_id,))
        row = await cur.fetchone()
    match row:
        case (id_, name, email):
            return User(id_, name, email)
        case _:
            return None


async def create_user(name: str, email: str) -> int:
    """Insert a user and return its new id (the statement commits on its own)."""
    result = await pool.query(
        "main_pool", "INSERT INTO users (name, email) VALUES (%s, %s) RETURNING id", (name, email)
    )
    return int(result.scalar())


async def demo() -> tuple[User | None, User | None]:
    """With the pools running: create a user, read it back and look for a missing one.

    Returns ``(the created user as read back, the lookup of an unknown id)``.
    """
    await pool.query("main_pool", SCHEMA)

    user_id = await create_user("Alice", "alice@example.com")
    found = await get_user(user_id)
    missing = await get_user(-1)
    logger.info("create_user -> %s", user_id)
    logger.info("get_user(%s) -> %s", user_id, found)
    logger.info("get_user(-1) -> %s", missing)

    # Pool statistics cost no I/O: what a metrics exporter would poll.
    for name in POOLS:
        stats = pool.stats(name)
        logger.info(
            "%s: %d open (%d idle), %d checkouts", name, stats.size, stats.idle, stats.checkouts
        )
    return found, missing


async def main(dsn: str) -> tuple[User | None, User | None]:
    """Start the connector with :data:`POOLS` on ``dsn``, then run :func:`demo`."""
    connector = connector_application(_demo.connector_config(dsn, POOLS))
    async with otpy.start_application(connector):
        return await demo()


#: ``otpy run user_service:app --config examples.toml`` (from examples/): the
#: pools come from the file, the connector starts first, :func:`demo` runs once.
app = _demo.application("user_service", lambda env: demo())


if __name__ == "__main__":
    _demo.setup_logging(__name__)
    args = _demo.parser(__doc__).parse_args()
    with _demo.database(args.dsn) as dsn:
        trio.run(main, dsn)
