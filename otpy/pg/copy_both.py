"""Replication connections and libpq's COPY_BOTH mode, driven by trio.

A logical replication session is a :class:`~otpy.pg.connection.TrioConnection`
opened with ``replication=database`` (:func:`replication_connect`).  Once
``START_REPLICATION`` has switched it to COPY_BOTH (:func:`start_copy_both`),
it carries only copy data in both directions: frames from the server
(:func:`wait_copy_data`) and standby status updates to it
(:func:`send_copy_data`), until the server ends the stream
(:func:`finish_copy_both`) or the connection is closed.

Design and why:

* **libpq's non-blocking copy calls, waited for with trio.**
  ``PGconn.get_copy_data(1)`` / ``put_copy_data`` / ``flush`` never block;
  when they would, the task waits with :func:`trio.lowlevel.wait_readable` /
  :func:`trio.lowlevel.wait_writable`.  psycopg's ``Copy`` objects cannot be
  used: they are for COPY IN or OUT, one direction at a time.
* **No lock while streaming.**  One task reads while another may write (a
  reader answers keepalives while its handler runs); nothing else may use
  the connection once it streams, so taking its lock would only serialise
  the two directions.
* **Session settings pinned.**  The walsender formats text-mode pgoutput
  values with its session's DateStyle, IntervalStyle and TimeZone: they are
  pinned (:data:`REPLICATION_SESSION_SETTINGS`) after any ``options`` of the
  caller, so that psycopg's loaders read the values right.
* **Simple query protocol only.**  A walsender refuses the extended protocol:
  the connection is in autocommit mode with prepared statements disabled, and
  replication commands take no parameters (quote identifiers instead).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, cast

import trio
from psycopg import errors as e
from psycopg import pq
from psycopg.rows import TupleRow

# Imported first: importing it checks the psycopg internals used below.
import otpy.pg.compat  # noqa: F401

# isort: split
from psycopg import generators
from psycopg.conninfo import make_conninfo

from otpy.pg.config import one_line, redacted_error
from otpy.pg.connection import TrioConnection
from otpy.pg.errors import ConnectionClosedError, ReplicationProtocolError
from otpy.pg.waiting import busy_checkpoint, wait_gen

__all__ = [
    "REPLICATION_SESSION_SETTINGS",
    "ReplicationConnection",
    "finish_copy_both",
    "replication_connect",
    "send_copy_data",
    "start_copy_both",
    "wait_copy_data",
]

_CONN_OK = pq.ConnStatus.OK
_COPY_BOTH = pq.ExecStatus.COPY_BOTH


#: Settings pinned on every replication connection.  The walsender formats
#: text-mode pgoutput values with its session's DateStyle, IntervalStyle and
#: TimeZone; psycopg's loaders (and the value decoder) rely on these.
REPLICATION_SESSION_SETTINGS: dict[str, str] = {
    "DateStyle": "ISO,MDY",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "client_encoding": "UTF8",
}


def _replication_options(user_options: str | None) -> str:
    pinned = " ".join(f"-c {name}={value}" for name, value in REPLICATION_SESSION_SETTINGS.items())
    # libpq applies options left to right: ours come last so that they win.
    return f"{user_options} {pinned}" if user_options else pinned


class ReplicationConnection(TrioConnection[TupleRow]):
    """A :class:`TrioConnection` opened with ``replication=database``.

    Made by :func:`replication_connect`.  Leaving ``async with`` only closes
    it: there is no transaction to commit on a walsender session, and once
    streaming has started no command can be sent (a ``COMMIT`` would fail with
    "another command is already in progress").
    """

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()


async def replication_connect(conninfo: str = "", **kwargs: Any) -> ReplicationConnection:
    """Open a logical replication connection (``replication=database``).

    The connection is in autocommit mode with prepared statements disabled,
    because a walsender accepts only the simple query protocol: run replication
    commands with ``await conn.execute("IDENTIFY_SYSTEM")`` (no parameters;
    quote identifiers with :class:`psycopg.sql.Identifier`).  DateStyle,
    IntervalStyle, TimeZone and client_encoding are pinned through the
    ``options`` parameter (:data:`REPLICATION_SESSION_SETTINGS`), after any
    options given by the caller.

    Start streaming with :func:`start_copy_both`, then use
    :func:`wait_copy_data` and :func:`send_copy_data`.
    """
    from psycopg.conninfo import conninfo_to_dict

    problem: e.Error | None = None
    try:
        params = conninfo_to_dict(conninfo, **kwargs)
        params["replication"] = "database"
        params["options"] = _replication_options(cast("str | None", params.get("options")))
        dsn = make_conninfo("", **params)
    except e.Error as ex:
        problem = redacted_error(ex, conninfo, kwargs)  # raised below, unchained
    if problem is not None:
        raise problem
    return await ReplicationConnection.connect(dsn, autocommit=True, prepare_threshold=None)


async def start_copy_both(conn: TrioConnection[Any], command: str | bytes) -> None:
    """Send ``START_REPLICATION ...`` (simple protocol) and enter COPY_BOTH mode.

    ``command`` is the complete replication command, already quoted.  Returns
    once the server has accepted it; the connection then carries only copy
    data, driven by :func:`wait_copy_data` and :func:`send_copy_data`, until it
    is closed.

    Raises:
        psycopg.Error: the server rejected the command (e.g. unknown slot).
        ReplicationProtocolError: the server did not switch to COPY_BOTH.
    """
    data = command.encode(conn.pgconn._encoding) if isinstance(command, str) else command
    async with conn.lock:
        conn._check_connection_ok()
        conn.pgconn.send_query(data)
        results = await conn.wait(generators.execute(conn.pgconn))
    last = results[-1] if results else None
    if last is None:
        raise ReplicationProtocolError("the server sent no result for the replication command")
    if last.status == pq.ExecStatus.FATAL_ERROR:
        raise e.error_from_result(last, encoding=conn.pgconn._encoding)
    if last.status != _COPY_BOTH:
        raise ReplicationProtocolError(
            f"the replication command returned {pq.ExecStatus(last.status).name}, not "
            f"COPY_BOTH: use conn.execute() for commands that do not stream"
        )


async def wait_copy_data(conn: TrioConnection[Any]) -> bytes | None:
    """Return the next COPY_BOTH message from the server, waiting with trio.

    Returns the raw message (``b"w"`` XLogData, ``b"k"`` keepalive, ...), or
    ``None`` when the server ended the stream normally.  One task at a time may
    wait for data; another task may concurrently use :func:`send_copy_data`
    (this is what lets a reader answer keepalives while a handler runs).  No
    lock is taken: nothing else may use the connection while it streams.

    Raises:
        ConnectionClosedError: the connection was lost or closed.
        psycopg.Error: the server ended the stream with an error (e.g. the
            backend was terminated or the slot dropped).
        ReplicationProtocolError: the connection is not in COPY_BOTH mode.
    """
    pgconn = conn.pgconn
    while True:
        if pgconn.status != _CONN_OK:
            raise ConnectionClosedError("the replication connection is closed")
        try:
            nbytes, data = pgconn.get_copy_data(1)
        except e.OperationalError as ex:
            # psycopg raises for libpq's -2: connection lost, or not in COPY mode.
            raise _copy_read_error(pgconn, str(ex)) from None
        if nbytes > 0:
            await busy_checkpoint()
            return bytes(data)
        if nbytes == 0:
            try:
                await trio.lowlevel.wait_readable(pgconn.socket)
            except trio.ClosedResourceError as ex:
                raise ConnectionClosedError("the replication connection was closed") from ex
            except trio.BusyResourceError as ex:
                raise e.InterfaceError(
                    "another task is already waiting for copy data on this connection"
                ) from ex
            try:
                pgconn.consume_input()
            except e.OperationalError as ex:
                raise ConnectionClosedError(f"replication connection lost: {ex}") from None
            continue
        if nbytes == -1:
            await finish_copy_both(conn)
            return None
        # -2: libpq error (connection lost, or not in COPY mode).
        raise _copy_read_error(pgconn, _pq_error(pgconn))


def _copy_read_error(pgconn: pq.abc.PGconn, message: str) -> e.OperationalError:
    """The error for a failed read of copy data: the connection lost, or not in COPY mode."""
    if pgconn.status != _CONN_OK:
        return ConnectionClosedError(f"replication connection lost: {message}")
    return ReplicationProtocolError(
        f"cannot read copy data (is START_REPLICATION running?): {message}"
    )


async def finish_copy_both(conn: TrioConnection[Any]) -> None:
    """Collect the server's final result after ``get_copy_data`` reported the end (-1).

    :func:`wait_copy_data` calls it itself; a reader that takes already
    buffered messages straight from ``conn.pgconn.get_copy_data(1)`` (to
    avoid a scheduler pass per message) calls it when that returns -1.

    Raises:
        psycopg.Error: the server ended the stream with an error (e.g. the
            slot was dropped, or the walsender was terminated).
    """
    results = await wait_gen(generators.fetch_many(conn.pgconn), conn.pgconn.socket)
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise e.error_from_result(result, encoding=conn.pgconn._encoding)


async def send_copy_data(conn: TrioConnection[Any], data: bytes) -> None:
    """Send one COPY_BOTH message (e.g. a standby status update) and flush it.

    Waits with trio while the socket is not writable.  Safe to call while
    another task waits in :func:`wait_copy_data`.

    Raises:
        ConnectionClosedError: the connection was lost or closed.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    pgconn = conn.pgconn
    try:
        while True:
            if pgconn.status != _CONN_OK:
                raise ConnectionClosedError("the replication connection is closed")
            sent = pgconn.put_copy_data(data)
            if sent == 1:
                break
            if sent < 0:
                raise ConnectionClosedError(f"cannot send copy data: {_pq_error(pgconn)}")
            await trio.lowlevel.wait_writable(pgconn.socket)
        while (flushed := pgconn.flush()) == 1:
            await trio.lowlevel.wait_writable(pgconn.socket)
        if flushed < 0:
            raise ConnectionClosedError(f"cannot send copy data: {_pq_error(pgconn)}")
    except e.OperationalError as ex:
        if isinstance(ex, ConnectionClosedError):
            raise
        raise ConnectionClosedError(f"cannot send copy data: {ex}") from ex
    except trio.ClosedResourceError as ex:
        raise ConnectionClosedError("the replication connection was closed") from ex
    await trio.lowlevel.cancel_shielded_checkpoint()


def _pq_error(pgconn: pq.abc.PGconn) -> str:
    return one_line(pgconn.get_error_message(pgconn._encoding)) or "unknown libpq error"
