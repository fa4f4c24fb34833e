"""psycopg's :class:`~psycopg.AsyncConnection`, driven by trio.

:class:`psycopg.AsyncConnection` consumes psycopg's protocol generators with
asyncio; :class:`TrioConnection` consumes the very same generators with trio
(:mod:`otpy.pg.waiting`), and swaps psycopg's asyncio lock for a trio lock
(:class:`ConnectionLock`).  Everything built on top of the connection's
``wait`` and ``lock`` (cursors, server-side cursors, ``transaction()``, COPY,
pipeline mode, ``notifies()``, ``TypeInfo.fetch``, row factories, adapters)
therefore works unchanged under trio.

What trio needs and psycopg cannot give it:

* **Cancellation.**  psycopg cancels the server-side query only on
  ``asyncio.CancelledError``.  Here, when a task is cancelled while waiting on
  the server, the query is cancelled on the server inside a shielded scope and
  the generator drained, so the connection comes back usable; when that takes
  longer than :attr:`TrioConnection.cancel_timeout`, the connection is closed.
* **Name resolution.**  libpq resolves host names with a blocking call: hosts
  are resolved with :func:`trio.socket.getaddrinfo` first and passed to libpq
  as ``hostaddr`` (one attempt per host and address).
* **Closing.**  :func:`trio.lowlevel.notify_closing` is called before libpq
  closes the socket, so a task waiting on it wakes up with
  :class:`~otpy.pg.errors.ConnectionClosedError` instead of waiting forever.
  :meth:`TrioConnection.close_now` is the one place that closes a socket.

Replication mode (``replication=database``) and its COPY_BOTH streaming are in
:mod:`otpy.pg.copy_both`.  The psycopg internals used here
(``psycopg._conninfo_utils``, the ``wait``/``lock`` protocol of
``AsyncConnection``, ``_connect_gen``/``_cancel_gen``) are checked at import
by :mod:`otpy.pg.compat`.
"""

from __future__ import annotations

import logging
import math
import socket
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import psycopg
import trio
from psycopg import errors as e
from psycopg import pq
from psycopg.abc import AdaptContext
from psycopg.rows import AsyncRowFactory, Row, tuple_row

# Imported first: importing it checks the psycopg internals used below.
import otpy.pg.compat  # noqa: F401

# isort: split
from psycopg import _conninfo_utils
from psycopg._capabilities import capabilities
from psycopg.conninfo import make_conninfo, timeout_from_conninfo

from otpy._moved import moved_names
from otpy.pg.config import libpq_settings, one_line, redact, redacted_error
from otpy.pg.errors import ConnectError, ConnectTimeoutError
from otpy.pg.waiting import WAIT_R, WAIT_W, drive, wait_conn_gen, wait_gen

if TYPE_CHECKING:
    from typing import Self

__all__ = ["ConnectionLock", "TrioConnection"]

# Names that moved to the modules cut from this one (#18): old imports keep working, with a warning.
__getattr__ = moved_names(
    __name__,
    {
        "TESTED_PSYCOPG": "otpy.pg.compat:TESTED_PSYCOPG",
        "REPLICATION_SESSION_SETTINGS": "otpy.pg.copy_both:REPLICATION_SESSION_SETTINGS",
        "ReplicationConnection": "otpy.pg.copy_both:ReplicationConnection",
        "finish_copy_both": "otpy.pg.copy_both:finish_copy_both",
        "replication_connect": "otpy.pg.copy_both:replication_connect",
        "send_copy_data": "otpy.pg.copy_both:send_copy_data",
        "start_copy_both": "otpy.pg.copy_both:start_copy_both",
        "wait_copy_data": "otpy.pg.copy_both:wait_copy_data",
    },
)

logger = logging.getLogger(__name__)

_ACTIVE = pq.TransactionStatus.ACTIVE
_UNKNOWN = pq.TransactionStatus.UNKNOWN
_CONN_OK = pq.ConnStatus.OK
_COPY_BOTH = pq.ExecStatus.COPY_BOTH

#: Seconds to wait for a cancelled command to end before sending the cancel again.
_CANCEL_RETRY_INTERVAL = 0.5


# --------------------------------------------------------------------------
# Connecting: DNS with trio, then libpq's non-blocking connect per attempt
# --------------------------------------------------------------------------


def _describe_attempt(attempt: dict[str, Any]) -> str:
    """Describe one connection attempt without any secret (host, port, address)."""
    parts = [f"host={attempt.get('host') or '(default)'}"]
    if attempt.get("hostaddr") and attempt.get("hostaddr") != attempt.get("host"):
        parts.append(f"hostaddr={attempt['hostaddr']}")
    parts.append(f"port={attempt.get('port') or '(default)'}")
    return " ".join(parts)


#: The parameters otpy's connect logic reads itself (to split hosts, resolve
#: names with trio and time attempts).  psycopg reads them from the DSN or the
#: ``PG*`` environment only, missing those given by a service file
#: (psycopg/psycopg#698): they are taken from libpq's own resolution instead.
_ATTEMPT_PARAMS = (
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "load_balance_hosts",
    "target_session_attrs",
)


def _with_libpq_settings(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` plus the attempt parameters libpq would take from elsewhere.

    libpq's precedence is: the DSN, then the service file, then the ``PG*``
    environment, then its defaults.  Adding what it resolved for the keys
    otpy's connect logic reads keeps that precedence exactly (a service
    file's ``host`` wins over ``$PGHOST``), and leaves every other key to
    libpq at connection time.

    Raises:
        psycopg.OperationalError: libpq refuses the parameters (unknown
            service, ports that do not match the hosts...).
    """
    settings = libpq_settings(params)
    extra = {k: settings[k] for k in _ATTEMPT_PARAMS if k not in params and settings.get(k)}
    return {**params, **extra} if extra else params


async def _resolve_attempts(
    params: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Split ``params`` into one attempt per host and address, resolving names with trio.

    Returns the attempts and the resolution failures (as (description, reason)).  This is
    psycopg's ``conninfo_attempts_async`` with trio's resolver in place of
    asyncio's: libpq's own ``getaddrinfo`` would block the whole trio thread.
    """
    get_param = _conninfo_utils.get_param
    attempts: list[dict[str, Any]] = []
    failures: list[tuple[str, str]] = []
    prefer_standby = get_param(params, "target_session_attrs") == "prefer-standby"
    if prefer_standby:
        params = {k: v for k, v in params.items() if k != "target_session_attrs"}
    for attempt in _conninfo_utils.split_attempts(params):
        host = get_param(attempt, "host")
        if not host or host.startswith("/") or host[1:2] == ":" or get_param(attempt, "hostaddr"):
            attempts.append(attempt)
            continue
        if _conninfo_utils.is_ip_address(host):
            attempts.append({**attempt, "hostaddr": host})
            continue
        port = get_param(attempt, "port")
        if not port:
            port_def = _conninfo_utils.get_param_def("port")
            port = (port_def and port_def.compiled) or "5432"
        try:
            infos = await trio.socket.getaddrinfo(
                host, port, proto=socket.IPPROTO_TCP, type=socket.SOCK_STREAM
            )
        except OSError as ex:
            failures.append((f"host={host} port={port}", f"could not resolve the host name: {ex}"))
            continue
        for info in infos:
            address = str(info[4][0])
            attempts.append({**attempt, "hostaddr": address})
    if get_param(params, "load_balance_hosts") == "random":
        import random

        random.shuffle(attempts)
    if prefer_standby:
        attempts = [{**a, "target_session_attrs": "standby"} for a in attempts] + attempts
    return attempts, failures


def _settle(pgconn: pq.abc.PGconn) -> Any:
    """Generator consuming all that the server still sends for an interrupted command.

    Used after a cancellation, when psycopg's own generator has returned but
    libpq is still busy: results not yet read, a COPY TO whose data must be
    read to its (error) end, or a COPY FROM that must be ended.  Raises
    ``InternalError`` for COPY_BOTH, which cannot be left: the caller closes.
    """
    nulls = 0
    while pgconn.transaction_status == _ACTIVE:
        if pgconn.is_busy():
            yield WAIT_R
            pgconn.consume_input()
            continue
        result = pgconn.get_result()
        if result is None:
            # End of one command's results; two in a row while still ACTIVE
            # means a state this cannot settle (e.g. a pipeline): give up.
            nulls += 1
            if nulls > 1:
                raise e.InternalError("the connection stays active with no result pending")
            continue
        nulls = 0
        if result.status == pq.ExecStatus.COPY_OUT:
            while True:
                nbytes, _ = pgconn.get_copy_data(1)
                if nbytes < 0:
                    break
                if nbytes == 0:
                    yield WAIT_R
                    pgconn.consume_input()
        elif result.status == pq.ExecStatus.COPY_IN:
            while pgconn.put_copy_end(b"cancelled by the client") == 0:
                yield WAIT_W
            while pgconn.flush() == 1:
                yield WAIT_W
        elif result.status == _COPY_BOTH:
            raise e.InternalError("cannot leave COPY_BOTH mode")


class ConnectionLock:
    """The trio lock serialising the commands of one :class:`TrioConnection`.

    A :class:`trio.Lock` underneath, with two differences that matter for a
    database connection:

    * Acquiring a *free* lock is not a checkpoint (``trio.Lock`` yields to the
      scheduler even then).  Every command run under the lock waits on the
      socket, which is a checkpoint, so nothing is lost, and a round trip costs
      one scheduler pass instead of two.
    * For the same reason, a free lock is acquired even in an already-cancelled
      scope.  psycopg's clean-up code (the rollback in
      ``transaction().__aexit__``, closing a server-side cursor) takes the lock
      while the task is being cancelled; the command then runs shielded and
      bounded (see :class:`TrioConnection`), instead of never running and
      leaving the connection in an aborted transaction.

    A lock held by another task is waited for as with ``trio.Lock`` (FIFO, and
    cancellable).
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def acquire(self) -> None:
        """Acquire the lock (see the class docstring for what differs from trio.Lock)."""
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    def release(self) -> None:
        """Release the lock."""
        self._lock.release()

    def locked(self) -> bool:
        """Whether a task holds the lock."""
        return self._lock.locked()

    def statistics(self) -> trio.LockStatistics:
        """trio's statistics of the lock (owner, waiting tasks)."""
        return self._lock.statistics()

    __aenter__ = acquire

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


class TrioConnection(psycopg.AsyncConnection[Row]):
    """A psycopg :class:`~psycopg.AsyncConnection` whose waiting is done by trio.

    Create it with :meth:`connect` (never with the constructor), inside
    ``trio.run``::

        async with await TrioConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT %s::int", (42,))
            assert await cur.fetchone() == (42,)

    The whole psycopg async API is available.  Differences from the asyncio
    class:

    * ``lock`` is a trio lock (:class:`ConnectionLock`): several tasks may share a connection,
      their commands are serialised (a connection still runs one command at a
      time).
    * If the calling task is cancelled while a command runs, the command is
      cancelled on the server and its results drained (shielded), so the
      connection is left usable: idle in autocommit mode, or in a failed
      transaction that ``transaction()``'s exit rolls back.  If that takes longer
      than :attr:`cancel_timeout` the connection is closed instead.
    * A command *started* in an already-cancelled scope (typically the
      ``ROLLBACK`` of ``transaction().__aexit__`` while the task is being
      cancelled) is run to completion, shielded and bounded by
      :attr:`cancel_timeout`, and then ``trio.Cancelled`` is raised: clean-up
      keeps the connection consistent, and a loop of queries still stops.
    * Host names are resolved with trio; ``connect_timeout`` applies per attempt.
    """

    cancel_timeout: float = 5.0
    """Seconds allowed to cancel an interrupted command and drain it before the
    connection is closed instead (instances may override it)."""

    def __init__(
        self,
        pgconn: pq.abc.PGconn,
        row_factory: AsyncRowFactory[Row] = cast(AsyncRowFactory[Row], tuple_row),  # noqa: B008
    ) -> None:
        super().__init__(pgconn, row_factory)
        # psycopg annotates the lock as asyncio.Lock; psycopg only uses it as an
        # async context manager, which ConnectionLock provides.
        self.lock = ConnectionLock()  # type: ignore[assignment]

    @classmethod
    async def connect(
        cls,
        conninfo: str = "",
        *,
        autocommit: bool = False,
        prepare_threshold: int | None = 5,
        context: AdaptContext | None = None,
        row_factory: AsyncRowFactory[Row] | None = None,
        cursor_factory: type[psycopg.AsyncCursor[Row]] | None = None,
        **kwargs: Any,
    ) -> Self:
        """Connect to the server and return a new connection (trio's version of psycopg's).

        ``conninfo`` and ``kwargs`` are libpq parameters (a conninfo string
        and/or keywords, merged as psycopg does).  Several comma-separated
        hosts are tried in order (``load_balance_hosts=random`` shuffles them),
        each host name is resolved with trio and every address tried in turn;
        ``connect_timeout`` bounds each attempt.

        Raises:
            ConnectError: no attempt succeeded; the message lists every attempt
                (host, address, port, reason), never the password.
            ConnectTimeoutError: every attempt timed out.
        """
        secrets = (conninfo, kwargs)
        problem: e.Error | None = None
        try:
            params = _with_libpq_settings(await cls._get_connection_params(conninfo, **kwargs))
            timeout = timeout_from_conninfo(params)
            attempts, unresolved = await _resolve_attempts(dict(params))
        except e.Error as ex:
            # psycopg's and libpq's messages may quote the DSN, password
            # included: raised outside the handler, unchained from the original.
            problem = redacted_error(ex, *secrets)
        if problem is not None:
            raise problem
        timeouts = 0
        failures = [(d, redact(r, *secrets)) for d, r in unresolved]
        rv: Self | None = None
        for attempt in attempts:
            descr = _describe_attempt(attempt)
            logger.debug("connection attempt: %s", descr)
            try:
                gen = cls._connect_gen(make_conninfo("", **attempt))
                rv = cast("Self", await wait_conn_gen(gen, timeout=timeout or None))
            except e._WaitTimeout:
                timeouts += 1
                failures.append((descr, f"timed out after {timeout}s (connect_timeout)"))
            except e.Error as ex:
                failures.append((descr, redact(one_line(str(ex)), *secrets)))
            else:
                logger.debug("connection succeeded: %s", descr)
                break
        if rv is None:
            summary = "; ".join(f"{d}: {r}" for d, r in failures) or "no host to connect to"
            error_class = ConnectError
            if attempts and timeouts == len(attempts):
                error_class = ConnectTimeoutError
            raise error_class(
                f"could not connect to PostgreSQL ({len(failures)} failed attempt(s)): {summary}",
                failures,
            ) from None
        rv._autocommit = bool(autocommit)
        if row_factory:
            rv.row_factory = row_factory
        if cursor_factory:
            rv.cursor_factory = cursor_factory
        if context:
            from psycopg.adapt import AdaptersMap

            rv._adapters = AdaptersMap(context.adapters)
        rv.prepare_threshold = prepare_threshold
        return rv

    # psycopg's signature: `timeout` is part of the contract its callers rely on.
    async def wait(
        self,
        gen: Any,
        interval: float = 0.1,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        """Consume a psycopg generator operating on this connection, waiting with trio.

        This is the hook every psycopg operation goes through.  ``interval`` is
        accepted for compatibility and ignored: trio wakes us exactly when the
        socket is ready, with no polling.  See the class docstring for what
        happens on cancellation.
        """
        fileno = self.pgconn.socket
        if trio.current_effective_deadline() == -math.inf:
            return await self._run_while_cancelled(gen, fileno)
        try:
            return await wait_gen(gen, fileno, timeout)
        except (trio.Cancelled, KeyboardInterrupt):
            with trio.CancelScope(shield=True):
                await self._recover_interrupted(gen, fileno)
            raise

    async def _run_while_cancelled(self, gen: Any, fileno: int) -> Any:
        """Run a command started in a cancelled scope, shielded and bounded; then raise.

        Only a command actually sent is completed (a ``ROLLBACK`` from a
        clean-up path); a generator that merely waits for the server (e.g. for
        notifications) is abandoned at once.
        """
        with trio.CancelScope(shield=True):
            try:
                state = next(gen)
            except StopIteration:
                state = None
            if state is not None:
                if self.pgconn.transaction_status != _ACTIVE:
                    gen.close()  # nothing in flight: just stop waiting
                else:
                    with trio.move_on_after(self.cancel_timeout) as timeout_scope:
                        await drive(gen, state, fileno)
                    if timeout_scope.cancelled_caught:
                        self._close_unusable(
                            "a command run while the task was cancelled did not finish"
                        )
        await trio.lowlevel.checkpoint()  # raises trio.Cancelled: the scope is cancelled
        raise AssertionError("unreachable: the scope was cancelled")  # pragma: no cover

    async def _recover_interrupted(self, gen: Any, fileno: int) -> None:
        """After an interruption, cancel the command on the server and drain ``gen``.

        Must run shielded.  Closes the connection when it cannot be brought back
        to a known state within :attr:`cancel_timeout`.
        """
        pgconn = self.pgconn
        if pgconn.status != _CONN_OK:
            return
        if pgconn.transaction_status != _ACTIVE:
            # Nothing in flight (e.g. waiting for notifications): abandoning the
            # generator leaves the protocol state consistent.
            gen.close()
            return
        with trio.move_on_after(self.cancel_timeout) as scope:
            drained = False
            while not drained:
                # A cancel request that reaches the backend before it has read
                # the query is ignored by PostgreSQL: if the command does not
                # end soon, ask again.  A cancel arriving once the backend is
                # idle is discarded too, so repeating it cannot hit a later
                # command (and none can start: we hold the connection's lock).
                try:
                    await self._send_cancel()
                except e.Error as ex:
                    logger.warning("query cancellation request failed: %s", ex)
                with trio.move_on_after(_CANCEL_RETRY_INTERVAL):
                    try:
                        await wait_gen(gen, fileno)
                    except e.QueryCanceled:
                        pass  # the expected outcome
                    except e.Error as ex:
                        logger.debug("error draining a cancelled command: %r", ex)
                    drained = True
            # The generator may have finished on a COPY response (the cancel
            # then ends the copy with an error): consume whatever is pending.
            if pgconn.status == _CONN_OK and pgconn.transaction_status == _ACTIVE:
                try:
                    await wait_gen(_settle(pgconn), fileno)
                except e.Error as ex:
                    logger.debug("error settling a cancelled command: %r", ex)
        if scope.cancelled_caught:
            self._close_unusable(
                f"the cancelled command did not stop within {self.cancel_timeout}s"
            )
        elif pgconn.status == _CONN_OK and pgconn.transaction_status in (_ACTIVE, _UNKNOWN):
            self._close_unusable("the connection is in an unknown state after a cancellation")

    async def _send_cancel(self) -> None:
        """Ask the server to cancel the running command, without blocking trio."""
        if capabilities.has_cancel_safe():
            await wait_conn_gen(self._cancel_gen())
        else:  # pragma: no cover - libpq < 17: the blocking PQcancel, in a thread
            cancel = self.pgconn.get_cancel()
            await trio.to_thread.run_sync(cancel.cancel)

    def _close_unusable(self, reason: str) -> None:
        logger.warning("closing PostgreSQL connection: %s", reason)
        # Not through close(): `_closed` stays as it is, so `broken` is True
        # (unless another task did close() it meanwhile) and users can tell.
        self.close_now()

    def close_now(self) -> None:
        """Close the socket at once, synchronously, with no round trip to the server.

        The one way otpy closes a connection's socket (:meth:`close` ends
        with it too).  For code that cannot wait: a replication session whose
        reader is being killed, a leftover session holding a slot, a command
        that could not be cancelled.  Tasks waiting on the socket wake up with
        :class:`~otpy.pg.errors.ConnectionClosedError`
        (:func:`trio.lowlevel.notify_closing` is called before libpq closes
        it); the server sees the connection drop and ends its backend.

        Unlike :meth:`close`, the connection is not marked as closed by its
        owner: ``broken`` is True afterwards, which is what it is.  Does
        nothing on a closed connection.
        """
        if self.closed:
            return
        fileno = _socket_or_none(self.pgconn)
        if fileno is not None:
            trio.lowlevel.notify_closing(fileno)
        self.pgconn.finish()

    async def cancel_safe(self, *, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Cancel the command running on the connection, waiting with trio.

        Raises:
            psycopg.errors.CancellationTimeout: the server did not answer the
                cancel request within ``timeout`` seconds.
        """
        if not self._should_cancel():
            return
        with trio.move_on_after(timeout or math.inf):
            await self._send_cancel()
            return
        raise e.CancellationTimeout("cancellation timeout expired")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """Commit (or roll back on error) and close, as psycopg does, but always close.

        psycopg skips ``close()`` when the rollback raises a ``BaseException``:
        under trio that is ``trio.Cancelled`` whenever the block is left by a
        cancellation, and the connection would leak.
        """
        try:
            await super().__aexit__(exc_type, exc_val, exc_tb)
        finally:
            if not self.closed and not getattr(self, "_pool", None):
                await self.close()

    async def close(self) -> None:
        """Close the connection.

        Tasks waiting on it (for example a query holding the lock) wake up with
        :class:`~otpy.pg.errors.ConnectionClosedError`.  Closing completes even
        in a cancelled scope.
        """
        if self.closed:
            return
        self._closed = True
        self.close_now()
        await trio.lowlevel.cancel_shielded_checkpoint()


def _socket_or_none(self: pq.abc.PGconn) -> int | None:
    try:
        return self.socket
    except e.OperationalError:
        return None
