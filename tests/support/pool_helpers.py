"""Helpers shared by the pool tests."""

from __future__ import annotations

from typing import Any

import trio

from otpy.pg.config import Backoff, PoolConfig
from otpy.pg.connection import TrioConnection


def pool_config(size: int | tuple[int, int] = 2, **kwargs: Any) -> PoolConfig:
    """A PoolConfig for tests: quick reconnects, no surprises from timers unless asked."""
    low, high = (size, size) if isinstance(size, int) else size
    kwargs.setdefault("reconnect", Backoff(initial=0.02, maximum=0.2, jitter=0.0))
    kwargs.setdefault("health_check_interval", None)
    kwargs.setdefault("checkout_timeout", 5.0)
    return PoolConfig(name="p", database="db", min_size=low, max_size=high, **kwargs)


class Admin:
    """A superuser connection for observing and killing the pool's backends."""

    def __init__(self, conn: TrioConnection[Any], app_name: str) -> None:
        self.conn = conn
        self.app_name = app_name

    async def scalar(self, sql: str, params: Any = None) -> Any:
        cur = await self.conn.execute(sql, params)
        row = await cur.fetchone()
        return None if row is None else row[0]

    async def backends(self) -> list[int]:
        cur = await self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY pid",
            (self.app_name,),
        )
        return [row[0] for row in await cur.fetchall()]

    async def wait_backends(self, expected: list[int] | int, within: float = 10.0) -> list[int]:
        """Wait until the pool's backends are ``expected`` (pids, or a count).

        A closed connection's backend leaves pg_stat_activity asynchronously and
        the server offers no notification of it, so this re-reads the view until
        the condition holds or the deadline passes (then the test fails).
        """
        with trio.fail_after(within):
            while True:
                pids = await self.backends()
                if pids == expected or (isinstance(expected, int) and len(pids) == expected):
                    return pids
                await trio.sleep(0.01)

    async def wait_state(self, pid: int, state: str, within: float = 10.0) -> None:
        """Wait until backend ``pid`` is in ``state`` (polling, as for :meth:`wait_backends`)."""
        sql = "SELECT state FROM pg_stat_activity WHERE pid = %s"
        with trio.fail_after(within):
            while True:
                if await self.scalar(sql, (pid,)) == state:
                    return
                await trio.sleep(0.01)

    async def terminate(self, pid: int) -> bool:
        return bool(await self.scalar("SELECT pg_terminate_backend(%s)", (pid,)))

    async def last_query(self, pid: int) -> str | None:
        result: str | None = await self.scalar(
            "SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)
        )
        return result
