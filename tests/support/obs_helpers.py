"""Helpers of the observability tests: conditions with deadlines, a tiny HTTP client."""

from __future__ import annotations

from collections.abc import Callable

import trio


async def wait_until(predicate: Callable[[], object], within: float = 15.0) -> None:
    """Re-check ``predicate`` every 10 ms until it holds; fail after ``within`` seconds.

    For values that change without an event to wait on (positions on the
    server, counters in a snapshot): a condition with a deadline.
    """
    with trio.fail_after(within):
        while True:
            if predicate():
                return
            await trio.sleep(0.01)


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    """``GET path`` on 127.0.0.1:port: (status, headers, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body.decode()
