"""TrioConnection when the whole server goes away.

These tests stop and restart the session's throw-away server (``own_server``),
so they live in a module of their own: each one restarts the server before it
returns, whatever happens, so that later modules find it running.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import trio
import trio.testing

from otpy.pg.connection import TrioConnection
from otpy.pg.copy_both import replication_connect, wait_copy_data
from otpy.pg.errors import ConnectError, ConnectionClosedError
from otpy.pg.testing import PostgresServer


@pytest.fixture
def server(own_server: PostgresServer) -> Iterator[PostgresServer]:
    try:
        yield own_server
    finally:
        own_server.start()  # no-op when it is running


async def _stop(server: PostgresServer, mode: str) -> None:
    # PostgresServer.stop blocks (it waits for the postmaster): run it in a thread
    # so the trio connections stay responsive meanwhile.
    await trio.to_thread.run_sync(lambda: server.stop(mode=mode))


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_server_stopped_under_an_idle_connection(server: PostgresServer, mode: str) -> None:
    conn: TrioConnection[Any] = await TrioConnection.connect(server.dsn, autocommit=True)
    try:
        await conn.execute("SELECT 1")
        await _stop(server, mode)
        with pytest.raises(psycopg.OperationalError) as info:
            await conn.execute("SELECT 1")
        text = str(info.value).lower()
        assert "terminat" in text or "closed" in text or "lost" in text, text
        assert conn.closed and conn.broken
        with pytest.raises(psycopg.OperationalError, match="the connection is closed"):
            await conn.execute("SELECT 1")
    finally:
        await conn.close()


async def test_server_stopped_during_a_query(server: PostgresServer) -> None:
    conn: TrioConnection[Any] = await TrioConnection.connect(server.dsn, autocommit=True)
    caught: list[Exception] = []

    async def query() -> None:
        try:
            await conn.execute("SELECT pg_sleep(60)")
        except psycopg.OperationalError as exc:
            caught.append(exc)

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(query)
                await trio.testing.wait_all_tasks_blocked()
                await _stop(server, "fast")
        assert len(caught) == 1 and conn.broken
    finally:
        await conn.close()


async def test_connect_while_stopped_then_after_restart(server: PostgresServer) -> None:
    await _stop(server, "fast")
    with pytest.raises(ConnectError) as info:
        await TrioConnection.connect(server.dsn)
    assert f"port={server.port}" in str(info.value)
    assert "refused" in str(info.value).lower()
    await trio.to_thread.run_sync(server.start)
    async with await TrioConnection.connect(server.dsn) as conn:
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)


async def test_replication_stream_when_server_stops(server: PostgresServer) -> None:
    from otpy.pg.copy_both import start_copy_both

    async with await replication_connect(server.dsn) as repl:
        await repl.execute('CREATE_REPLICATION_SLOT "otpy_stop" TEMPORARY LOGICAL pgoutput')
        await start_copy_both(
            repl,
            "START_REPLICATION SLOT \"otpy_stop\" LOGICAL 0/0 (proto_version '1', "
            "publication_names 'none')",
        )
        await _stop(server, "immediate")
        with trio.fail_after(20), pytest.raises((ConnectionClosedError, psycopg.OperationalError)):
            while await wait_copy_data(repl) is not None:
                pass
        assert repl.closed
