"""otpy.pg.waiting: psycopg's protocol generators driven by trio, on plain sockets (no server).

A psycopg generator yields "wait for read / write" states and is resumed with
the readiness found; the fakes below do the same on a socket pair, so the
waits are tested without PostgreSQL.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator, Iterator

import pytest
import trio
import trio.testing
from psycopg import errors as e

from otpy._util import first_leaf
from otpy.pg.errors import ConnectionClosedError
from otpy.pg.waiting import READY_R, WAIT_R, wait_either, wait_gen


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _read_one(sock: socket.socket) -> Generator[int, int, bytes]:
    """Like psycopg's generators: ask to wait for reading, then read what came."""
    ready = yield WAIT_R
    assert ready == READY_R
    return sock.recv(100)


async def test_a_generator_that_never_blocks_returns_its_value() -> None:
    def done() -> Generator[int, int, str]:
        return "at once"
        yield WAIT_R  # pragma: no cover - makes this a generator

    assert await wait_gen(done(), -1) == "at once"


async def test_a_generator_is_resumed_once_its_socket_is_readable(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    results: list[bytes] = []

    async def reader() -> None:
        results.append(await wait_gen(_read_one(a), a.fileno()))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert results == []
            b.send(b"reply")
    assert results == [b"reply"]


async def test_data_already_there_is_taken_even_with_a_zero_timeout(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    b.send(b"early")
    assert await wait_gen(_read_one(a), a.fileno(), timeout=0) == b"early"


async def test_a_wait_timeout_raises_psycopgs_wait_timeout(
    pair: tuple[socket.socket, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    a, _ = pair
    start = trio.current_time()
    with pytest.raises(e._WaitTimeout):
        await wait_gen(_read_one(a), a.fileno(), timeout=2.5)
    assert trio.current_time() - start == pytest.approx(2.5)


async def test_closing_the_socket_wakes_the_wait_with_connection_closed_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, _ = pair

    async def closer() -> None:
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.notify_closing(a.fileno())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(closer)
            with pytest.raises(ConnectionClosedError, match="closed"):
                await wait_gen(_read_one(a), a.fileno())


def test_the_first_real_error_stands_for_a_group_of_alternatives() -> None:
    first, second = trio.ClosedResourceError("read side"), trio.ClosedResourceError("write side")
    assert first_leaf(BaseExceptionGroup("", [first, second])) is first
    nested = BaseExceptionGroup("", [BaseExceptionGroup("", [first]), second])
    assert first_leaf(nested) is first
    assert first_leaf(first) is first


def test_a_cancellation_stands_for_the_group_only_when_nothing_else_failed() -> None:
    cancelled = _cancelled()
    error = OSError("socket gone")
    assert first_leaf(BaseExceptionGroup("", [cancelled, error])) is error
    assert first_leaf(BaseExceptionGroup("", [BaseExceptionGroup("", [cancelled])])) is cancelled


def _cancelled() -> trio.Cancelled:
    """A real ``trio.Cancelled`` (it has no public constructor)."""
    caught: list[trio.Cancelled] = []

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.lowlevel.checkpoint()
            except trio.Cancelled as exc:
                caught.append(exc)
                raise

    trio.run(main)
    return caught[0]


async def test_wait_for_readable_or_writable_wakes_on_either() -> None:
    """The RW wait used when a full send buffer meets pending results (hard to force via SQL)."""
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # fill a's send buffer: a is now neither writable nor readable
                a.send(b"x" * 65536)
        results: list[int] = []

        async def waiter() -> None:
            results.append(await wait_either(a.fileno()))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                assert results == []
                b.send(b"reply")  # a becomes readable
        assert results == [1]  # Ready.R

        a.recv(16)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                b.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    while True:  # drain: a becomes writable
                        b.recv(1 << 20)
        assert results[1] == 2  # Ready.W

        a.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # full again
                a.send(b"x" * 65536)
        caught: list[BaseException] = []

        async def closer() -> None:
            await trio.testing.wait_all_tasks_blocked()
            trio.lowlevel.notify_closing(a.fileno())

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(closer)
                try:
                    await wait_either(a.fileno())
                except trio.ClosedResourceError as exc:  # a single exception, not a group
                    caught.append(exc)
        assert len(caught) == 1
    finally:
        a.close()
        b.close()
