"""Connection pools as actors: the Python counterpart of epg_connector's ``epg_pool``.

Each pool is a small supervision tree (a manager actor, one worker actor per
connection; see :mod:`otpy.pg.pool.manager`), registered by name, so any task
of the application can write::

    from otpy.pg import pool

    async with pool.connection("main_pool") as conn:        # epg_pool:with/2
        cur = await conn.execute("SELECT id, name FROM users WHERE id = %s", (42,))
        row = await cur.fetchone()

    result = await pool.query("main_pool", "INSERT INTO t VALUES (%s) RETURNING id", (1,))
    new_id = result.scalar()                                  # epg_pool:query/3

    async with pool.transaction("main_pool") as conn:         # epg_pool:transaction/2
        await conn.execute("UPDATE accounts SET ...")         # COMMIT, or ROLLBACK on error

    pool.stats("main_pool")                                   # PoolStats snapshot

Start a pool with :func:`pool_spec` under a supervisor (what the connector
application does), or standalone with ``async with open_pool(name, pool_config,
db_config) as p:``.

Connections are psycopg connections driven by trio
(:class:`~otpy.pg.connection.TrioConnection`) in **autocommit** mode, like
epgsql: each statement outside :func:`transaction` commits on its own.  A
connection always goes back to the pool at the end of the block, whatever
happens in it; one returned inside a transaction or in error is rolled back,
one returned busy, closed or broken is replaced, before anyone else gets it.
Returning a clean connection costs no database round trip.

Session state that only the server knows (``SET`` without ``LOCAL``,
``LISTEN``, temporary tables, advisory locks) is *not* reset, since detecting
it would cost a round trip on every return: prefer ``SET LOCAL`` inside
:func:`transaction`, or ``await conn.close()`` at the end of the block to have
the connection replaced.

Where things are (this module only re-exports them):

* :mod:`otpy.pg.pool.checkout`: :func:`connection`, :func:`transaction`,
  :func:`query`, :func:`acquire` and the objects they return; the
  :class:`Pool` handle, :func:`stats`, :func:`wait_ready`;
* :mod:`otpy.pg.pool.standalone`: :func:`open_pool`, a pool for one block;
* :mod:`otpy.pg.pool.manager`: the pool's supervision tree, :func:`pool_spec`,
  :func:`pool_key`; ``otpy.pg.pool.worker``: one actor per connection;
  ``otpy.pg.pool.box``: what the manager and the workers share;
* ``otpy.pg.pool.core``: the pool's state and the synchronous checkout and
  check-in (the design of the hot path is in its docstring);
* :mod:`otpy.pg.pool.types`: :class:`QueryResult`, :class:`PoolStats`;
  :mod:`otpy.pg.pool.errors`: the errors.

See ``docs/pools.md`` for the design and the measurements behind it.
"""

from __future__ import annotations

from otpy._moved import moved_names
from otpy.pg.pool.checkout import (
    Lease,
    Pool,
    PooledConnection,
    PooledTransaction,
    Query,
    acquire,
    connection,
    query,
    stats,
    transaction,
    wait_ready,
)
from otpy.pg.pool.errors import (
    PoolClosed,
    PoolError,
    PoolNotFound,
    PoolOverloaded,
    PoolTimeout,
    PoolUnavailable,
    QueryTimeout,
)
from otpy.pg.pool.manager import pool_key, pool_spec
from otpy.pg.pool.standalone import open_pool
from otpy.pg.pool.types import PoolStats, QueryResult

__all__ = [
    "Lease",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolNotFound",
    "PoolOverloaded",
    "PoolStats",
    "PoolTimeout",
    "PoolUnavailable",
    "PooledConnection",
    "PooledTransaction",
    "Query",
    "QueryResult",
    "QueryTimeout",
    "acquire",
    "connection",
    "open_pool",
    "pool_key",
    "pool_spec",
    "query",
    "stats",
    "transaction",
    "wait_ready",
]

# Names that left the face: plumbing (still in their modules) and the alias
# TooManyWaiters (one spelling per name: PoolOverloaded).
__getattr__ = moved_names(
    __name__,
    {
        "HOLD_BUCKETS": "otpy.pg.pool.types:HOLD_BUCKETS",
        "LEAK_CHECK_INTERVAL": "otpy.pg.pool.manager:LEAK_CHECK_INTERVAL",
        "TooManyWaiters": "otpy.pg.pool.errors:PoolOverloaded",
        "WAIT_BUCKETS": "otpy.pg.pool.types:WAIT_BUCKETS",
        "make_pool_supervisor": "otpy.pg.pool.manager:make_pool_supervisor",
    },
)
