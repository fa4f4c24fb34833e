"""The metrics and health endpoint: ``/metrics``, ``/healthz``, ``/readyz`` on one port.

A deliberately small HTTP/1.0-style server on trio (one request per
connection, ``Connection: close``), because the scrapers that call it
(Prometheus, Kubernetes probes) send one short ``GET`` and nothing else.
Why not ``prometheus_client.start_http_server``: it runs a threaded
``http.server`` that would read otpy's state from another thread while the
trio tasks change it; here the request is answered inside the trio run, so a
snapshot is taken between two task switches and is consistent.

* ``GET /metrics``: the Prometheus text exposition (:mod:`otpy.pg.metrics`;
  needs ``trio-otp-pg[metrics]``, else 501 with the reason);
* ``GET /healthz``: liveness, 200 as long as the trio run answers;
* ``GET /readyz``: readiness, 200 when :func:`otpy.pg.metrics.readiness`
  finds nothing wrong, else 503 with one line per problem.

Start it from code with :func:`serve_metrics` (``nursery.start``) or
:func:`metrics_server_spec` under a supervisor; the connector application
starts it when its configuration has a ``[metrics]`` table
(:class:`~otpy.pg.config.MetricsConfig`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Final

import trio

from otpy.child_spec import ChildSpec, Restart
from otpy.gen_server import TaskServer
from otpy.pg.config import MetricsConfig
from otpy.pg.metrics import MetricsUnavailable, exposition, make_registry, readiness

__all__ = ["REQUEST_TIMEOUT", "metrics_server_spec", "serve_metrics"]

logger = logging.getLogger("otpy.pg.health")

#: Seconds a client may take to send its request line and headers.
REQUEST_TIMEOUT: Final = 10.0
#: Bytes of request head accepted (a probe sends about a hundred).
_MAX_HEAD: Final = 8192
_TEXT: Final = "text/plain; charset=utf-8"


async def serve_metrics(
    host: str = "127.0.0.1",
    port: int = 9187,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` until cancelled.

    ``port`` 0 picks a free port; ``task_status.started`` reports the port
    bound (``port = await nursery.start(serve_metrics, "127.0.0.1", 0)``).

    Raises:
        OSError: the address cannot be bound (in use, not local).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    registry: Any = None
    with contextlib.suppress(MetricsUnavailable):  # /metrics then answers 501
        registry = make_registry()
    logger.info(
        "metrics endpoint on http://%s:%s/metrics",
        host,
        bound,
        extra={"event": "metrics_listening", "host": host, "port": bound},
    )
    task_status.started(bound)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.move_on_after(REQUEST_TIMEOUT):
                    path = await _read_path(stream)
                    if path is not None:
                        await stream.send_all(_answer(path, registry))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    await trio.serve_listeners(handle, listeners)


async def _read_path(stream: trio.SocketStream) -> str | None:
    """The path of a ``GET`` request, once its head arrived (None if malformed/closed)."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        chunk = await stream.receive_some(_MAX_HEAD)
        if not chunk:
            return None
        head += chunk
        if len(head) > _MAX_HEAD:
            return None
    parts = head.split(b"\n", 1)[0].split()
    if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
        return ""
    return parts[1].decode("latin-1").split("?", 1)[0]


def _answer(path: str, registry: Any) -> bytes:
    """The response to ``path``; a failure is a 500 (logged), never the end of the server."""
    try:
        return _respond(path, registry)
    except Exception as exc:
        logger.exception(
            "metrics endpoint: %s failed",
            path,
            extra={"event": "metrics_request_failed", "path": path},
        )
        return _response(500, f"{type(exc).__name__}: {exc}\n")


def _respond(path: str, registry: Any) -> bytes:
    if path == "/metrics":
        if registry is None:
            return _response(
                501, "prometheus_client is missing: pip install 'trio-otp-pg[metrics]'\n"
            )
        from prometheus_client import CONTENT_TYPE_LATEST

        return _response(200, exposition(registry), CONTENT_TYPE_LATEST)
    if path == "/healthz":
        return _response(200, "ok\n")
    if path == "/readyz":
        problems = readiness()
        if problems:
            return _response(503, "".join(f"{p}\n" for p in problems))
        return _response(200, "ready\n")
    if path == "":
        return _response(405, "only GET is served\n")
    return _response(404, "not found: try /metrics, /healthz or /readyz\n")


_REASONS: Final = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    501: "Not Implemented",
}


def _response(status: int, body: str | bytes, content_type: str = _TEXT) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    reason = _REASONS.get(status, "Service Unavailable")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + data


def metrics_server_spec(config: MetricsConfig, *, id: Any = "otpy.pg.metrics") -> ChildSpec:
    """A child spec running :func:`serve_metrics` on ``config``'s host and port.

    The child counts as started once the port is bound, so a port in use
    fails the start (and the application) with the ``OSError`` at once.
    """

    def start() -> TaskServer:
        return TaskServer(serve_metrics, config.host, config.port, wait_started=True)

    return ChildSpec(id=id, start=start, restart=Restart.PERMANENT)
