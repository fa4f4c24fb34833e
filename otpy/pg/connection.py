"""psycopg's :class:`~psycopg.AsyncConnection`, driven by trio.

psycopg 3 implements the PostgreSQL protocol as generators that never block:
they yield "wait until the socket is readable/writable" states and are resumed
with the readiness found.  :class:`psycopg.AsyncConnection` consumes those
generators with asyncio; :class:`TrioConnection` consumes the very same
generators with :func:`trio.lowlevel.wait_readable` /
:func:`trio.lowlevel.wait_writable`, and swaps psycopg's asyncio lock for a
:class:`trio.Lock`.  Everything built on top of the connection's ``wait`` and
``lock`` (cursors, server-side cursors, ``transaction()``, COPY, pipeline
mode, ``notifies()``, ``TypeInfo.fetch``, row factories, adapters) therefore
works unchanged under trio.

What trio needs and psycopg cannot give it:

* **Cancellation.**  psycopg cancels the server-side query only on
  ``asyncio.CancelledError``.  Here, when a task is cancelled while waiting on
  the server, the query is cancelled on the server inside a shielded scope and
  the generator drained, so the connection comes back usable; when that takes
  longer than :attr:`TrioConnection.cancel_timeout`, the connection is closed.
* **Name resolution.**  libpq resolves host names with a blocking call: hosts
  are resolved with :func:`trio.socket.getaddrinfo` first and passed to libpq
  as ``hostaddr``.
* **Closing.**  :func:`trio.lowlevel.notify_closing` is called before libpq
  closes the socket, so a task waiting on it wakes up with
  :class:`~otpy.pg.errors.ConnectionClosedError` instead of waiting forever.

Replication mode (``replication=database``) is supported by
:func:`replication_connect`, :func:`start_copy_both`, :func:`wait_copy_data`
and :func:`send_copy_data`, which drive libpq's COPY_BOTH state without
blocking.

This module is the only place in otpy that touches psycopg internals
(``psycopg.generators``, ``psycopg.waiting``, ``psycopg._conninfo_utils``, the
``wait``/``lock`` protocol of ``AsyncConnection``).  They are checked at import
(:class:`~otpy.pg.errors.PsycopgCompatibilityError`); the tested range is
:data:`TESTED_PSYCOPG`.
"""

from __future__ import annotations

import logging
import math
import select
import socket
import time
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import psycopg
import trio
from psycopg import errors as e
from psycopg import pq
from psycopg.abc import AdaptContext
from psycopg.rows import AsyncRowFactory, Row, TupleRow, tuple_row

from otpy.pg.config import _one_line, libpq_settings, redact
from otpy.pg.errors import (
    ConnectError,
    ConnectionClosedError,
    ConnectTimeoutError,
    PsycopgCompatibilityError,
    ReplicationProtocolError,
)

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "REPLICATION_SESSION_SETTINGS",
    "TESTED_PSYCOPG",
    "ConnectionLock",
    "ReplicationConnection",
    "TrioConnection",
    "finish_copy_both",
    "replication_connect",
    "send_copy_data",
    "start_copy_both",
    "wait_copy_data",
]

logger = logging.getLogger(__name__)

#: The psycopg versions this module was tested with (a pip requirement specifier).
#: 3.3.6 is the first release whose ``AsyncConnection.wait`` takes a ``timeout`` and
#: raises ``_WaitTimeout`` (older ones tick with ``interval``); tested: 3.3.6, 3.3.7,
#: 3.3.9, with both the binary and the pure-Python implementation.
TESTED_PSYCOPG = ">=3.3.6,<3.4"
_TESTED_MIN = (3, 3, 6)
_TESTED_MAX_EXCLUSIVE = (3, 4)


# --------------------------------------------------------------------------
# psycopg internals used below: checked once, at import.
# --------------------------------------------------------------------------


def _check_psycopg() -> None:
    """Fail at import, naming what is missing, if psycopg's internals changed."""
    from psycopg import _conninfo_utils, conninfo, generators, waiting

    required: list[tuple[object, str]] = [
        (psycopg.AsyncConnection, "wait"),
        (psycopg.AsyncConnection, "_connect_gen"),
        (psycopg.AsyncConnection, "_cancel_gen"),
        (psycopg.AsyncConnection, "_should_cancel"),
        (psycopg.AsyncConnection, "_get_connection_params"),
        (psycopg.AsyncConnection, "cancel_safe"),
        (generators, "execute"),
        (generators, "fetch_many"),
        (waiting, "Wait"),
        (waiting, "Ready"),
        (_conninfo_utils, "split_attempts"),
        (_conninfo_utils, "get_param"),
        (_conninfo_utils, "get_param_def"),
        (_conninfo_utils, "is_ip_address"),
        (conninfo, "timeout_from_conninfo"),
        (conninfo, "make_conninfo"),
        (e, "_WaitTimeout"),
        (pq.PGconn, "get_copy_data"),
        (pq.PGconn, "put_copy_data"),
        (pq.PGconn, "flush"),
    ]
    missing = [
        f"{getattr(owner, '__name__', owner)}.{name}"
        for owner, name in required
        if not hasattr(owner, name)
    ]
    if missing:
        raise PsycopgCompatibilityError(
            f"psycopg {psycopg.__version__} lacks internals that otpy.pg.connection relies on "
            f"({', '.join(missing)}); install a tested version: psycopg{TESTED_PSYCOPG}"
        )
    # The generator protocol: yield Wait.R/W/RW, resume with Ready flags.
    if not (int(waiting.Wait.R) == 1 and int(waiting.Wait.W) == 2 and int(waiting.Ready.R) == 1):
        raise PsycopgCompatibilityError(
            f"psycopg {psycopg.__version__} changed its wait protocol; "
            f"install a tested version: psycopg{TESTED_PSYCOPG}"
        )
    try:
        version = tuple(int(part) for part in psycopg.__version__.split(".")[:3])
    except ValueError:  # pragma: no cover - a development version string
        version = _TESTED_MIN
    if not (_TESTED_MIN <= version < _TESTED_MAX_EXCLUSIVE):
        warnings.warn(
            f"otpy.pg.connection was tested with psycopg{TESTED_PSYCOPG}, not "
            f"{psycopg.__version__}: its internals were found, but run the test suite",
            RuntimeWarning,
            stacklevel=3,
        )


_check_psycopg()

from psycopg import _conninfo_utils, generators, waiting  # noqa: E402
from psycopg._capabilities import capabilities  # noqa: E402
from psycopg.conninfo import make_conninfo, timeout_from_conninfo  # noqa: E402

RV = TypeVar("RV")

_WAIT_R = int(waiting.Wait.R)
_WAIT_W = int(waiting.Wait.W)
_WAIT_RW = int(waiting.Wait.RW)
_READY_R = int(waiting.Ready.R)
_READY_W = int(waiting.Ready.W)

_ACTIVE = pq.TransactionStatus.ACTIVE
_UNKNOWN = pq.TransactionStatus.UNKNOWN
_CONN_OK = pq.ConnStatus.OK
_COPY_BOTH = pq.ExecStatus.COPY_BOTH

#: How long a generator that never blocks may keep running before we let other
#: tasks run (same rationale and value as psycopg's asyncio waiter).
_MAX_BUSY_TIME = 0.005
_last_yield = 0.0

#: Seconds to wait for a cancelled command to end before sending the cancel again.
_CANCEL_RETRY_INTERVAL = 0.5


def _make_ready_function() -> Callable[[int, int], int]:
    """Return a function telling, without blocking, which of ``wait`` is ready on ``fd``."""
    fast = getattr(waiting, "_ready", None)
    if callable(fast):
        return cast(Callable[[int, int], int], fast)

    def ready_poll(fileno: int, wait: int) -> int:  # pragma: no cover - psycopg < 3.3
        poller = select.poll()
        poller.register(
            fileno,
            (select.POLLIN if wait & _WAIT_R else 0) | (select.POLLOUT if wait & _WAIT_W else 0),
        )
        ready = 0
        for _, events in poller.poll(0):
            if events & select.POLLIN:
                ready |= _READY_R
            if events & select.POLLOUT:
                ready |= _READY_W
        return ready

    return ready_poll


_ready_now = _make_ready_function()


# --------------------------------------------------------------------------
# Waiting for psycopg generators with trio
# --------------------------------------------------------------------------


async def _wait_either(fileno: int) -> int:
    """Wait until ``fileno`` is readable or writable; return the Ready flags.

    trio has no single call waiting for both, so two tasks wait and the first
    to wake cancels the other.  Only used when a generator asks for RW and the
    socket is neither writable nor readable right now (a full send buffer),
    which is rare: waiting for writing alone could deadlock when the server is
    itself blocked writing results we do not read.
    """
    ready = 0

    async def waiter(fn: Callable[[int], Any], flag: int, scope: trio.CancelScope) -> None:
        nonlocal ready
        await fn(fileno)
        ready |= flag
        scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, trio.lowlevel.wait_readable, _READY_R, nursery.cancel_scope)
            nursery.start_soon(waiter, trio.lowlevel.wait_writable, _READY_W, nursery.cancel_scope)
    except BaseExceptionGroup as group:
        # Re-raise a single exception, so that callers can catch trio.Cancelled
        # or a closed socket exactly as for a plain wait.
        cancelled, rest = group.split(trio.Cancelled)
        leaf = _first_leaf(rest if rest is not None else cancelled)
        raise leaf from None
    return ready


def _first_leaf(group: BaseExceptionGroup[BaseException] | None) -> BaseException:
    assert group is not None
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _drive(gen: Any, state: int, fileno: int) -> Any:
    """Resume ``gen`` (which just yielded ``state``) until it returns; wait with trio."""
    global _last_yield
    try:
        while True:
            if state & _WAIT_W:
                # A socket we write to is nearly always writable: a zero-timeout
                # poll is far cheaper than a round trip through the scheduler.
                if time.monotonic() - _last_yield >= _MAX_BUSY_TIME:
                    await trio.lowlevel.checkpoint()
                    _last_yield = time.monotonic()
                ready = _ready_now(fileno, state)
                if not ready:
                    if state & _WAIT_R:
                        ready = await _wait_either(fileno)
                    else:
                        await trio.lowlevel.wait_writable(fileno)
                        ready = _READY_W
                    _last_yield = time.monotonic()
            elif state & _WAIT_R:
                # One scheduler pass before sleeping in epoll: other tasks run,
                # and a reply that arrived meanwhile (common on a local server)
                # is taken without registering the fd and going to sleep.  This
                # measurably cuts round-trip latency (asyncio psycopg's loop
                # also polls twice per round trip).
                await trio.lowlevel.checkpoint()
                if not _ready_now(fileno, _WAIT_R):
                    await trio.lowlevel.wait_readable(fileno)
                _last_yield = time.monotonic()
                ready = _READY_R
            else:
                raise e.InternalError(f"bad poll status: {state}")
            state = gen.send(ready)
    except StopIteration as ex:
        return ex.value
    except trio.ClosedResourceError as ex:
        raise ConnectionClosedError(
            "the connection was closed (by another task) while this task was waiting on it"
        ) from ex
    except trio.BusyResourceError as ex:
        raise e.InterfaceError(
            "another task is already waiting on this connection's socket: use the "
            "connection's lock (psycopg methods do) or one connection per task"
        ) from ex
    except OSError as ex:
        raise ConnectionClosedError(f"connection socket closed: {ex}") from ex


async def _wait_gen(gen: Any, fileno: int, timeout: float | None = None) -> Any:  # noqa: ASYNC109
    """Consume a psycopg ``PQGen`` (yielding wait states) with trio; return its value.

    Raises psycopg's ``_WaitTimeout`` when ``timeout`` expires (the contract of
    ``AsyncConnection.wait``, relied upon by ``notifies(timeout=...)``).
    """
    global _last_yield
    try:
        state = next(gen)
    except StopIteration as ex:
        # Completed without blocking: let other tasks run now and then.
        if time.monotonic() - _last_yield >= _MAX_BUSY_TIME:
            await trio.lowlevel.checkpoint()
            _last_yield = time.monotonic()
        return ex.value
    if timeout is None:
        return await _drive(gen, state, fileno)
    with trio.move_on_after(max(timeout, 0.0)):
        # Data already waiting is processed even with a zero timeout.
        if state & _WAIT_R and (ready := _ready_now(fileno, state)):
            try:
                state = gen.send(ready)
            except StopIteration as ex:
                return ex.value
        return await _drive(gen, state, fileno)
    raise e._WaitTimeout("wait timeout expired")


async def _wait_conn_gen(gen: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109
    """Consume a psycopg ``PQGenConn`` (yielding ``(fd, wait)``, the fd may change)."""
    deadline = math.inf if timeout is None else trio.current_time() + timeout
    try:
        fileno, state = next(gen)
        with trio.move_on_at(deadline):
            while True:
                if state & _WAIT_W and not state & _WAIT_R:
                    await trio.lowlevel.wait_writable(fileno)
                    ready = _READY_W
                elif state & _WAIT_R and not state & _WAIT_W:
                    await trio.lowlevel.wait_readable(fileno)
                    ready = _READY_R
                else:
                    ready = _ready_now(fileno, state) or await _wait_either(fileno)
                fileno, state = gen.send(ready)
        raise e._WaitTimeout("wait timeout expired")
    except StopIteration as ex:
        return ex.value
    except (OSError, trio.ClosedResourceError) as ex:
        raise e.OperationalError(f"connection socket closed: {ex}") from ex


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


def _redacted(ex: e.Error, *sources: object) -> e.Error:
    """A psycopg error of the same class as ``ex``, its message without any password.

    Raise it outside the ``except`` block that caught ``ex``: raised inside,
    it would keep ``ex`` (and the DSN its message quotes) as its context.
    """
    return type(ex)(redact(_one_line(str(ex)), *sources))


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
            yield _WAIT_R
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
                    yield _WAIT_R
                    pgconn.consume_input()
        elif result.status == pq.ExecStatus.COPY_IN:
            while pgconn.put_copy_end(b"cancelled by the client") == 0:
                yield _WAIT_W
            while pgconn.flush() == 1:
                yield _WAIT_W
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
            problem = _redacted(ex, *secrets)
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
                rv = cast("Self", await _wait_conn_gen(gen, timeout=timeout or None))
            except e._WaitTimeout:
                timeouts += 1
                failures.append((descr, f"timed out after {timeout}s (connect_timeout)"))
            except e.Error as ex:
                failures.append((descr, redact(_one_line(str(ex)), *secrets)))
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
            return await _wait_gen(gen, fileno, timeout)
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
                        await _drive(gen, state, fileno)
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
                        await _wait_gen(gen, fileno)
                    except e.QueryCanceled:
                        pass  # the expected outcome
                    except e.Error as ex:
                        logger.debug("error draining a cancelled command: %r", ex)
                    drained = True
            # The generator may have finished on a COPY response (the cancel
            # then ends the copy with an error): consume whatever is pending.
            if pgconn.status == _CONN_OK and pgconn.transaction_status == _ACTIVE:
                try:
                    await _wait_gen(_settle(pgconn), fileno)
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
            await _wait_conn_gen(self._cancel_gen())
        else:  # pragma: no cover - libpq < 17: the blocking PQcancel, in a thread
            cancel = self.pgconn.get_cancel()
            await trio.to_thread.run_sync(cancel.cancel)

    def _close_unusable(self, reason: str) -> None:
        logger.warning("closing PostgreSQL connection: %s", reason)
        # Not through close(): `_closed` stays as it is, so `broken` is True
        # (unless another task did close() it meanwhile) and users can tell.
        self._finish()

    def _finish(self) -> None:
        """Close the socket, waking any task waiting on it first."""
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
        self._finish()
        await trio.lowlevel.cancel_shielded_checkpoint()


def _socket_or_none(self: pq.abc.PGconn) -> int | None:
    try:
        return self.socket
    except e.OperationalError:
        return None


# --------------------------------------------------------------------------
# Replication mode
# --------------------------------------------------------------------------

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
        problem = _redacted(ex, conninfo, kwargs)  # raised below, unchained
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
            await _busy_checkpoint()
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


async def _busy_checkpoint() -> None:
    """A cancellation point that also lets other tasks run if we have not for a while.

    A stream whose frames are always already buffered would otherwise never
    yield to the scheduler and starve every other task.
    """
    global _last_yield
    if time.monotonic() - _last_yield >= _MAX_BUSY_TIME:
        await trio.lowlevel.checkpoint()
        _last_yield = time.monotonic()
    else:
        await trio.lowlevel.checkpoint_if_cancelled()


async def finish_copy_both(conn: TrioConnection[Any]) -> None:
    """Collect the server's final result after ``get_copy_data`` reported the end (-1).

    :func:`wait_copy_data` calls it itself; a reader that takes already
    buffered messages straight from ``conn.pgconn.get_copy_data(1)`` (to
    avoid a scheduler pass per message) calls it when that returns -1.

    Raises:
        psycopg.Error: the server ended the stream with an error (e.g. the
            slot was dropped, or the walsender was terminated).
    """
    results = await _wait_gen(generators.fetch_many(conn.pgconn), conn.pgconn.socket)
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
    return _one_line(pgconn.get_error_message(pgconn._encoding)) or "unknown libpq error"
