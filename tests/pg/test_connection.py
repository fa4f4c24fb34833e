"""TrioConnection against a real PostgreSQL: psycopg's API on trio, cancellation, closing.

Every test runs under trio (pytest-trio ``trio_mode``) against the suite's
throw-away server, in a database of this module's own (``module_dsn``).
"""

from __future__ import annotations

import enum
import itertools
import math
import socket
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import trio
import trio.testing
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row, namedtuple_row
from psycopg.types.enum import EnumInfo, register_enum

from otpy.pg.connection import ConnectionLock, TrioConnection
from otpy.pg.errors import ConnectError, ConnectionClosedError, ConnectTimeoutError

SECRET = "pa55-w0rd-never-shown"


@pytest.fixture
async def conn(module_dsn: str) -> AsyncIterator[TrioConnection[Any]]:
    async with await TrioConnection.connect(module_dsn, autocommit=True) as c:
        yield c


@pytest.fixture
async def other(module_dsn: str) -> AsyncIterator[TrioConnection[Any]]:
    """A second connection, to watch or disturb the first one."""
    async with await TrioConnection.connect(module_dsn, autocommit=True) as c:
        yield c


def _params(dsn: str, **overrides: Any) -> str:
    params = conninfo_to_dict(dsn)
    params.update(overrides)
    return make_conninfo(**params)  # type: ignore[arg-type]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def _backend_state(watcher: TrioConnection[Any], pid: int) -> str | None:
    cur = await watcher.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
    row = await cur.fetchone()
    return None if row is None else row[0]


# --- the basics -----------------------------------------------------------------------


async def test_execute_with_parameters(conn: TrioConnection[Any]) -> None:
    cur = await conn.execute("SELECT %s::int + 1, %s::text", (41, "hello"))
    assert await cur.fetchone() == (42, "hello")
    assert isinstance(conn, psycopg.AsyncConnection)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_row_factories(module_dsn: str) -> None:
    async with await TrioConnection.connect(module_dsn, row_factory=dict_row) as c:
        cur = await c.execute("SELECT 1 AS a, 'x' AS b")
        assert await cur.fetchone() == {"a": 1, "b": "x"}
        async with c.cursor(row_factory=namedtuple_row) as cur2:
            await cur2.execute("SELECT 2 AS n")
            row = await cur2.fetchone()
            assert row is not None and row._asdict() == {"n": 2}


async def test_client_cursor_fetch_variants_and_stream(conn: TrioConnection[Any]) -> None:
    async with conn.cursor() as cur:
        await cur.execute("SELECT g FROM generate_series(1, 10) g")
        assert await cur.fetchmany(3) == [(1,), (2,), (3,)]
        assert [r async for r in cur] == [(i,) for i in range(4, 11)]
        seen = [r[0] async for r in cur.stream("SELECT g FROM generate_series(1, 5) g")]
        assert seen == [1, 2, 3, 4, 5]
        await cur.executemany("SELECT %s", [(1,), (2,)])


async def test_transaction_commit_rollback_and_savepoint(conn: TrioConnection[Any]) -> None:
    await conn.execute("CREATE TABLE tx_items (v int)")
    async with conn.transaction():
        await conn.execute("INSERT INTO tx_items VALUES (1)")
        with pytest.raises(ZeroDivisionError):
            async with conn.transaction():  # savepoint: rolled back alone
                await conn.execute("INSERT INTO tx_items VALUES (2)")
                raise ZeroDivisionError
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await conn.execute("INSERT INTO tx_items VALUES (3)")
            raise RuntimeError("roll back")
    cur = await conn.execute("SELECT array_agg(v) FROM tx_items")
    assert await cur.fetchone() == ([1],)


async def test_implicit_transaction_commit(module_dsn: str) -> None:
    async with await TrioConnection.connect(module_dsn) as c:  # autocommit off
        await c.execute("CREATE TABLE implicit_tx (v int)")
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        await c.commit()
        assert c.info.transaction_status.name == "IDLE"


async def test_server_side_cursor(module_dsn: str) -> None:
    async with await TrioConnection.connect(module_dsn) as c:
        async with c.cursor("big", row_factory=dict_row) as cur:
            cur.itersize = 100
            await cur.execute("SELECT g AS n FROM generate_series(1, 1000) g")
            first = await cur.fetchmany(10)
            assert [r["n"] for r in first] == list(range(1, 11))
            rest = [r["n"] async for r in cur]
            assert rest == list(range(11, 1001))
        # The cursor really lived on the server: it is gone after close.
        cur2 = await c.execute("SELECT count(*) FROM pg_cursors WHERE name = 'big'")
        assert await cur2.fetchone() == (0,)


async def test_copy_in_and_out(conn: TrioConnection[Any]) -> None:
    await conn.execute("CREATE TABLE copy_items (id int, name text)")
    async with conn.cursor() as cur:
        async with cur.copy("COPY copy_items (id, name) FROM STDIN") as copy:
            for i in range(2000):
                await copy.write_row((i, f"name {i}"))
        cur2 = await conn.execute("SELECT count(*), sum(id) FROM copy_items")
        assert await cur2.fetchone() == (2000, sum(range(2000)))

        async with cur.copy("COPY (SELECT id, name FROM copy_items ORDER BY id) TO STDOUT") as copy:
            copy.set_types(["int4", "text"])
            rows = [row async for row in copy.rows()]
        assert rows[0] == (0, "name 0") and rows[-1] == (1999, "name 1999") and len(rows) == 2000

        async with cur.copy("COPY (SELECT 1, 'a') TO STDOUT") as copy:
            blocks = [bytes(block) async for block in copy]
        assert b"".join(blocks) == b"1\ta\n"


async def test_pipeline_mode(conn: TrioConnection[Any]) -> None:
    await conn.execute("CREATE TABLE pipe_items (v int)")
    async with conn.pipeline() as pipeline:
        cursors = [await conn.execute("SELECT %s::int * 2", (i,)) for i in range(20)]
        async with conn.cursor() as cur:
            await cur.executemany("INSERT INTO pipe_items VALUES (%s)", [(i,) for i in range(50)])
        await pipeline.sync()
        results = [await cur.fetchone() for cur in cursors]
    assert results == [(i * 2,) for i in range(20)]
    cur2 = await conn.execute("SELECT count(*) FROM pipe_items")
    assert await cur2.fetchone() == (50,)


async def test_typeinfo_fetch_and_enum(conn: TrioConnection[Any]) -> None:
    await conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    info = await EnumInfo.fetch(conn, "mood")
    assert info is not None and info.labels == ["sad", "ok", "happy"]

    class Mood(enum.Enum):
        sad = "sad"
        ok = "ok"
        happy = "happy"

    register_enum(info, conn, Mood)
    cur = await conn.execute("SELECT 'happy'::mood, %s", (Mood.sad,))
    assert await cur.fetchone() == (Mood.happy, Mood.sad)


async def test_notifies(conn: TrioConnection[Any], other: TrioConnection[Any]) -> None:
    await conn.execute("LISTEN otpy_chan")
    received: list[psycopg.Notify] = []
    listening = trio.Event()

    async def listen() -> None:
        gen = conn.notifies(stop_after=2)
        listening.set()
        async for notify in gen:
            received.append(notify)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen)
        await listening.wait()
        await other.execute("SELECT pg_notify('otpy_chan', 'one')")
        await other.execute("SELECT pg_notify('otpy_chan', 'two')")
    assert [(n.channel, n.payload) for n in received] == [
        ("otpy_chan", "one"),
        ("otpy_chan", "two"),
    ]
    assert received[0].pid == other.info.backend_pid


async def test_notifies_timeout_returns_without_notifications(conn: TrioConnection[Any]) -> None:
    await conn.execute("LISTEN otpy_quiet")
    with trio.fail_after(5):
        got = [n async for n in conn.notifies(timeout=0.2)]
    assert got == []
    # The connection is still usable afterwards.
    assert await (await conn.execute("SELECT 1")).fetchone() == (1,)


async def test_concurrent_tasks_are_serialised_by_the_lock(conn: TrioConnection[Any]) -> None:
    spans: list[tuple[int, Any, Any]] = []

    async def worker(i: int) -> None:
        cur = await conn.execute(
            "SELECT %s::int, clock_timestamp(), pg_sleep(0.03), clock_timestamp()", (i,)
        )
        row = await cur.fetchone()
        assert row is not None and row[0] == i
        spans.append((row[0], row[1], row[3]))

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(worker, i)
    assert sorted(s[0] for s in spans) == list(range(6))
    ordered = sorted(spans, key=lambda s: s[1])
    for before, after in itertools.pairwise(ordered):
        assert before[2] <= after[1], "two commands ran at the same time on one connection"
    assert isinstance(conn.lock, ConnectionLock)


# --- cancellation ---------------------------------------------------------------------


async def test_cancel_during_query_leaves_connection_idle_and_reusable(
    conn: TrioConnection[Any], other: TrioConnection[Any]
) -> None:
    pid = conn.info.backend_pid
    start = trio.current_time()
    with trio.move_on_after(0.3) as scope:
        await conn.execute("SELECT pg_sleep(30)")
    assert scope.cancelled_caught
    assert trio.current_time() - start < 5, "the query was not cancelled on the server"
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert not conn.closed
    assert await _backend_state(other, pid) == "idle"
    cur = await conn.execute("SELECT %s::int", (7,))
    assert await cur.fetchone() == (7,)
    assert conn.info.backend_pid == pid  # the same session, not a reconnection


async def test_cancel_inside_transaction_block_rolls_back(module_dsn: str) -> None:
    async with await TrioConnection.connect(module_dsn) as c:
        await c.execute("CREATE TABLE cancel_tx (v int)")
        await c.commit()
        with trio.move_on_after(0.3) as scope:
            async with c.transaction():
                await c.execute("INSERT INTO cancel_tx VALUES (1)")
                await c.execute("SELECT pg_sleep(30)")
        assert scope.cancelled_caught
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        cur = await c.execute("SELECT count(*) FROM cancel_tx")
        assert await cur.fetchone() == (0,)


async def test_cancel_while_fetching_from_server_side_cursor(module_dsn: str) -> None:
    async with await TrioConnection.connect(module_dsn) as c:
        with trio.move_on_after(0.3) as scope:
            async with c.transaction(), c.cursor("slow") as cur:
                await cur.execute("SELECT pg_sleep(30) FROM generate_series(1, 2)")
                await cur.fetchone()
        assert scope.cancelled_caught
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert await (await c.execute("SELECT 'ok'")).fetchone() == ("ok",)


async def test_cancel_that_cannot_finish_in_time_closes_the_connection(
    conn: TrioConnection[Any],
) -> None:
    conn.cancel_timeout = 0.0  # no time at all to cancel and drain
    with trio.move_on_after(0.2):
        await conn.execute("SELECT pg_sleep(30)")
    assert conn.closed and conn.broken
    with pytest.raises(psycopg.OperationalError, match="closed"):
        await conn.execute("SELECT 1")


async def test_command_started_in_a_cancelled_scope_runs_then_raises(
    conn: TrioConnection[Any],
) -> None:
    await conn.execute("CREATE TABLE late_items (v int)")
    with trio.CancelScope() as scope:
        scope.cancel()
        await conn.execute("INSERT INTO late_items VALUES (1)")
        pytest.fail("trio.Cancelled was not raised")  # pragma: no cover
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    cur = await conn.execute("SELECT count(*) FROM late_items")
    assert await cur.fetchone() == (1,)


async def test_cancel_safe_stops_a_query_from_another_task(conn: TrioConnection[Any]) -> None:
    caught: list[Exception] = []
    done = trio.Event()

    async def query() -> None:
        try:
            await conn.execute("SELECT pg_sleep(30)")
        except psycopg.errors.QueryCanceled as exc:
            caught.append(exc)
        finally:
            done.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(query)
            await trio.testing.wait_all_tasks_blocked()  # the query is sent and waiting
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE
            # PostgreSQL ignores a cancel that reaches the backend before it has
            # read the query (possible on a loaded machine): repeat until it ends.
            while not done.is_set():
                await conn.cancel_safe(timeout=5)
                with trio.move_on_after(0.5):
                    await done.wait()
    assert len(caught) == 1
    assert await (await conn.execute("SELECT 1")).fetchone() == (1,)


# --- closing and broken connections ---------------------------------------------------


async def test_close_wakes_a_task_waiting_on_the_connection(conn: TrioConnection[Any]) -> None:
    errors: list[BaseException] = []

    async def query() -> None:
        try:
            await conn.execute("SELECT pg_sleep(30)")
        except Exception as exc:
            errors.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(query)
            await trio.testing.wait_all_tasks_blocked()  # the query is sent and waiting
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE
            await conn.close()
    assert len(errors) == 1 and isinstance(errors[0], ConnectionClosedError)
    assert "closed" in str(errors[0])
    assert conn.closed and not conn.broken
    with pytest.raises(psycopg.OperationalError, match="the connection is closed"):
        await conn.execute("SELECT 1")


async def test_close_now_drops_the_connection_at_once_and_wakes_its_waiter(
    conn: TrioConnection[Any],
) -> None:
    errors: list[BaseException] = []

    async def query() -> None:
        try:
            await conn.execute("SELECT pg_sleep(30)")
        except Exception as exc:
            errors.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(query)
            await trio.testing.wait_all_tasks_blocked()  # the query is sent and waiting
            conn.close_now()  # synchronous: no round trip, no checkpoint
            assert conn.closed
    assert len(errors) == 1 and isinstance(errors[0], ConnectionClosedError)
    assert conn.broken  # closed without close(): its owner can tell
    conn.close_now()  # closing again does nothing
    with pytest.raises(psycopg.OperationalError, match="the connection is closed"):
        await conn.execute("SELECT 1")


def test_the_replication_helpers_old_import_path_warns_and_still_works() -> None:
    from otpy.pg import connection, copy_both

    for name in copy_both.__all__:
        with pytest.warns(DeprecationWarning, match=rf"otpy\.pg\.copy_both\.{name}"):
            assert getattr(connection, name) is getattr(copy_both, name)
    with pytest.warns(DeprecationWarning, match=r"otpy\.pg\.compat\.TESTED_PSYCOPG"):
        from otpy.pg.connection import TESTED_PSYCOPG
    assert TESTED_PSYCOPG == ">=3.3.6,<3.4"


async def test_terminated_backend_says_so(
    conn: TrioConnection[Any], other: TrioConnection[Any]
) -> None:
    await other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError) as info:
        await conn.execute("SELECT 1")
    assert "terminat" in str(info.value) or "closed" in str(info.value)
    assert conn.closed and conn.broken
    with pytest.raises(psycopg.OperationalError, match="the connection is closed"):
        await conn.execute("SELECT 1")


async def test_terminated_backend_while_waiting(
    conn: TrioConnection[Any], other: TrioConnection[Any]
) -> None:
    caught: list[Exception] = []

    async def query() -> None:
        try:
            await conn.execute("SELECT pg_sleep(30)")
        except psycopg.OperationalError as exc:
            caught.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(query)
            await trio.testing.wait_all_tasks_blocked()  # the query is sent and waiting
            await other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    assert len(caught) == 1
    assert "terminating connection due to administrator command" in str(caught[0])
    assert conn.closed and conn.broken


# --- connecting -----------------------------------------------------------------------


async def test_connect_failure_names_hosts_and_never_the_password(module_dsn: str) -> None:
    port = _closed_port()
    dsn = _params(module_dsn, port=port, password=SECRET)
    with pytest.raises(ConnectError) as info:
        await TrioConnection.connect(dsn)
    message = str(info.value)
    assert f"port={port}" in message and "127.0.0.1" in message
    assert "refused" in message.lower()
    assert SECRET not in message and SECRET not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert info.value.pgconn is None
    assert isinstance(info.value, psycopg.OperationalError)


async def test_multi_host_tries_hosts_in_order(module_dsn: str) -> None:
    real = conninfo_to_dict(module_dsn)
    dsn = _params(module_dsn, host="127.0.0.1,127.0.0.1", port=f"{_closed_port()},{real['port']}")
    async with await TrioConnection.connect(dsn) as c:
        assert c.info.port == int(real["port"])  # type: ignore[arg-type]
        assert await (await c.execute("SELECT 1")).fetchone() == (1,)


async def test_host_names_are_resolved_by_trio(module_dsn: str) -> None:
    class Resolver(trio.abc.HostnameResolver):
        def __init__(self) -> None:
            self.asked: list[str] = []

        async def getaddrinfo(self, host: Any, port: Any, *args: Any, **kw: Any) -> Any:
            self.asked.append(host if isinstance(host, str) else host.decode())
            if host in ("db.otpy.invalid", b"db.otpy.invalid"):
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", int(port)))]
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        async def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
            raise NotImplementedError

    resolver = Resolver()
    previous = trio.socket.set_custom_hostname_resolver(resolver)
    try:
        # libpq itself cannot resolve this name: only trio's resolver knows it.
        dsn = _params(module_dsn, host="nowhere.otpy.invalid,db.otpy.invalid")
        async with await TrioConnection.connect(dsn) as c:
            assert c.info.hostaddr == "127.0.0.1"
            assert c.info.host == "db.otpy.invalid"
        assert resolver.asked == ["nowhere.otpy.invalid", "db.otpy.invalid"]
        with pytest.raises(ConnectError, match="could not resolve"):
            await TrioConnection.connect(_params(module_dsn, host="nowhere.otpy.invalid"))
    finally:
        trio.socket.set_custom_hostname_resolver(previous)


async def test_connect_timeout(module_dsn: str) -> None:
    # A server that accepts the TCP connection and then never answers.
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        start = trio.current_time()
        with pytest.raises(ConnectTimeoutError, match="timed out") as info:
            await TrioConnection.connect(_params(module_dsn, port=port, connect_timeout=2))
        elapsed = trio.current_time() - start
        assert 1.5 < elapsed < 10
        assert f"port={port}" in str(info.value)
    finally:
        listener.close()


async def test_connect_can_be_cancelled(module_dsn: str) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        with trio.move_on_after(0.2) as scope:
            await TrioConnection.connect(_params(module_dsn, port=listener.getsockname()[1]))
        assert scope.cancelled_caught
    finally:
        listener.close()


async def test_connect_options_are_honoured(module_dsn: str) -> None:
    async with await TrioConnection.connect(
        module_dsn, application_name="otpy-test", prepare_threshold=None, autocommit=True
    ) as c:
        assert c.prepare_threshold is None and c.autocommit
        cur = await c.execute("SHOW application_name")
        assert await cur.fetchone() == ("otpy-test",)
        ident = sql.Identifier('weird "name"').as_string(c)
        assert ident == '"weird ""name"""'
    assert math.isfinite(TrioConnection.cancel_timeout)


async def test_cancel_during_pipeline(conn: TrioConnection[Any]) -> None:
    with trio.move_on_after(0.3) as scope:
        async with conn.pipeline():
            await conn.execute("SELECT 1")
            await conn.execute("SELECT pg_sleep(30)")
            await conn.execute("SELECT 2")
    assert scope.cancelled_caught
    assert not conn.closed
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert conn.info.pipeline_status == psycopg.pq.PipelineStatus.OFF
    assert await (await conn.execute("SELECT 3")).fetchone() == (3,)


async def test_cancel_during_copy_out(conn: TrioConnection[Any]) -> None:
    with trio.move_on_after(0.3) as scope:
        async with conn.cursor() as cur:
            query = "COPY (SELECT pg_sleep(30), g FROM generate_series(1, 2) g) TO STDOUT"
            async with cur.copy(query) as copy:
                async for _block in copy:
                    pass
    assert scope.cancelled_caught
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert await (await conn.execute("SELECT 4")).fetchone() == (4,)


async def test_cancel_in_the_middle_of_copy_in(conn: TrioConnection[Any]) -> None:
    await conn.execute("CREATE TABLE copy_cancelled (v int)")
    with trio.move_on_after(0.2) as scope:
        async with conn.cursor() as cur, cur.copy("COPY copy_cancelled FROM STDIN") as copy:
            await copy.write_row((1,))
            await trio.sleep_forever()  # the producer stalls; the deadline cancels it
    assert scope.cancelled_caught
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    cur2 = await conn.execute("SELECT count(*) FROM copy_cancelled")
    assert await cur2.fetchone() == (0,)  # the COPY was aborted, not committed


async def test_connect_through_the_unix_socket(pg_server: Any, module_dsn: str) -> None:
    if pg_server is None:
        pytest.skip("needs the throw-away server (its socket directory)")
    dsn = _params(module_dsn, host=str(pg_server.basedir))
    async with await TrioConnection.connect(dsn) as c:
        cur = await c.execute("SELECT inet_server_addr() IS NULL")  # NULL over a Unix socket
        assert await cur.fetchone() == (True,)


async def test_notifies_zero_timeout_takes_what_already_arrived(
    conn: TrioConnection[Any], other: TrioConnection[Any]
) -> None:
    await conn.execute("LISTEN otpy_poll")
    await other.execute("NOTIFY otpy_poll, 'ready'")
    await trio.lowlevel.wait_readable(conn.fileno())  # the notification is in the socket
    got = [n async for n in conn.notifies(timeout=0)]
    assert [(n.channel, n.payload) for n in got] == [("otpy_poll", "ready")]


async def test_async_with_block_left_by_cancellation_closes(module_dsn: str) -> None:
    with trio.move_on_after(0.3) as scope:
        async with await TrioConnection.connect(module_dsn) as c:
            await c.execute("SELECT pg_sleep(30)")
    assert scope.cancelled_caught
    assert c.closed and not c.broken  # closed by __aexit__, not leaked


async def test_large_copy_and_pipeline_wait_for_a_writable_socket(
    conn: TrioConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from otpy.pg import waiting

    calls = {"either": 0, "writable": 0}
    real_either, real_writable = waiting.wait_either, trio.lowlevel.wait_writable

    async def counting_either(fileno: int) -> int:
        calls["either"] += 1
        return await real_either(fileno)

    async def counting_writable(fd: Any) -> None:
        calls["writable"] += 1
        await real_writable(fd)

    monkeypatch.setattr(waiting, "wait_either", counting_either)
    monkeypatch.setattr(trio.lowlevel, "wait_writable", counting_writable)

    await conn.execute("CREATE TABLE big_items (id int, payload text)")
    payload = "x" * 100_000
    async with conn.cursor() as cur, cur.copy("COPY big_items FROM STDIN") as copy:
        for i in range(300):  # 30 MB: more than the socket buffers hold
            await copy.write_row((i, payload))
    cur2 = await conn.execute("SELECT count(*), sum(length(payload)) FROM big_items")
    assert await cur2.fetchone() == (300, 300 * 100_000)

    async with conn.pipeline(), conn.cursor() as cur:
        # Large statements and results in flight at once, in both directions.
        await cur.executemany("SELECT %s::text", [(payload,) for _ in range(300)], returning=True)
        lengths = []
        while True:
            row = await cur.fetchone()
            assert row is not None
            lengths.append(len(row[0]))
            if not cur.nextset():
                break
    assert lengths == [100_000] * 300
    assert calls["writable"] + calls["either"] > 0, "the socket never filled up"


async def test_cancelled_notifies_leaves_the_connection_usable(
    conn: TrioConnection[Any], other: TrioConnection[Any]
) -> None:
    await conn.execute("LISTEN otpy_abandoned")
    with trio.move_on_after(0.2) as scope:
        async for _ in conn.notifies():
            pytest.fail("no notification was sent")  # pragma: no cover
    assert scope.cancelled_caught and not conn.closed
    assert await (await conn.execute("SELECT 5")).fetchone() == (5,)
    # Still listening: a later notification is delivered.
    await other.execute("NOTIFY otpy_abandoned, 'later'")
    with trio.fail_after(5):
        got = [n.payload async for n in conn.notifies(stop_after=1)]
    assert got == ["later"]


async def test_notifies_in_an_already_cancelled_scope_stops_at_once(
    conn: TrioConnection[Any],
) -> None:
    await conn.execute("LISTEN otpy_never")
    start = trio.current_time()
    with trio.CancelScope() as scope:
        scope.cancel()
        async for _ in conn.notifies():
            pytest.fail("no notification was sent")  # pragma: no cover
    assert trio.current_time() - start < conn.cancel_timeout / 2
    assert not conn.closed
    assert await (await conn.execute("SELECT 6")).fetchone() == (6,)


async def test_ignored_cancel_request_is_repeated(
    conn: TrioConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL drops a cancel that reaches the backend before the query does;
    # simulate that by losing the first request.
    real_send_cancel = TrioConnection._send_cancel
    sent: list[float] = []

    async def lossy_send_cancel(self: TrioConnection[Any]) -> None:
        sent.append(trio.current_time())
        if len(sent) > 1:
            await real_send_cancel(self)

    monkeypatch.setattr(TrioConnection, "_send_cancel", lossy_send_cancel)
    pid = conn.info.backend_pid
    with trio.move_on_after(0.2) as scope:
        await conn.execute("SELECT pg_sleep(30)")
    assert scope.cancelled_caught and len(sent) == 2
    assert not conn.closed
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert await (await conn.execute("SELECT pg_backend_pid()")).fetchone() == (pid,)
