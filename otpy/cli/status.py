"""``otpy status``: the readers and pools of a running process, read from its metrics endpoint.

::

    otpy status [--url http://127.0.0.1:9187 | --host H --port P] [--watch SECONDS] [--json]

The process serves ``/metrics`` and ``/readyz`` (:mod:`otpy.pg.health`, the
``[metrics]`` table); this command fetches both, parses the Prometheus text
with ``prometheus_client`` and prints two tables (readers, pools) and the
readiness line.  Why read the endpoint rather than attach to the process: the
endpoint is already there for Prometheus and Kubernetes, needs no privilege,
and the numbers are the ones the alerts see.

One shot by default; ``--watch SECONDS`` refreshes (clearing the screen on a
terminal, one block per refresh otherwise, and showing an unreachable endpoint
as a line instead of ending); ``--json`` prints the parsed snapshot.  Proxies
from the environment are ignored: the endpoint is local, or reached directly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any, TextIO
from urllib.parse import urlsplit

import attrs

from otpy.cli.errors import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
)
from otpy.cli.render import format_table, human_bytes
from otpy.pg.config import MetricsConfig

__all__ = [
    "EndpointUnreachable",
    "PoolRow",
    "ReaderRow",
    "StatusParserMissing",
    "StatusSnapshot",
    "StatusUrlError",
    "fetch_status",
    "format_status",
    "parse_metrics",
    "register",
    "run_status",
    "status_url",
]

_DEFAULTS = MetricsConfig()
_CLEAR = "\x1b[H\x1b[2J"


class StatusUrlError(CliError):
    """``--url`` is not an ``http://HOST:PORT`` address: give the endpoint's base URL."""

    code = EXIT_USAGE


class EndpointUnreachable(CliError):
    """The metrics endpoint did not answer, or not as an otpy endpoint does.

    Check that the process runs with a ``[metrics]`` table and that host and
    port match it (``otpy status --port PORT``).
    """

    code = EXIT_UNAVAILABLE


class StatusParserMissing(CliError):
    """Parsing ``/metrics`` needs ``prometheus_client``: ``pip install 'trio-otp-pg[metrics]'``."""

    code = EXIT_CONFIG


@attrs.frozen
class ReaderRow:
    """One reader (subscription) as the endpoint reports it."""

    slot: str
    state: str | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    transactions: int | None = None
    changes: int | None = None
    restarts: int | None = None
    last_error: str | None = None


@attrs.frozen
class PoolRow:
    """One pool as the endpoint reports it."""

    name: str
    size: int | None = None
    idle: int | None = None
    in_use: int | None = None
    waiting: int | None = None
    timeouts: int | None = None


@attrs.frozen
class StatusSnapshot:
    """What ``otpy status`` shows: readers, pools and readiness of one process at one time."""

    url: str
    ready: bool
    problems: tuple[str, ...]
    """Why the process is not ready (``/readyz``'s lines); empty when ready."""
    readers: tuple[ReaderRow, ...]
    pools: tuple[PoolRow, ...]
    taken_at: float
    """Unix time of the fetch."""


def status_url(url: str | None, host: str, port: int) -> str:
    """The endpoint's base URL (no trailing ``/`` or ``/metrics``), from ``--url`` or host:port.

    Raises:
        StatusUrlError: ``url`` is not ``http://HOST[:PORT]``.
    """
    if url is None:
        return f"http://{host}:{port}"
    parts = urlsplit(url.strip())
    try:
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError when the port is not a number in range
    except ValueError:
        valid = False
    if not valid:
        raise StatusUrlError(
            f"invalid --url {url!r}: expected the endpoint's base URL, such as "
            f"http://127.0.0.1:{_DEFAULTS.port}"
        )
    path = parts.path.rstrip("/")
    for endpoint in ("/metrics", "/readyz", "/healthz"):
        path = path.removesuffix(endpoint)
    return f"{parts.scheme}://{parts.netloc}{path}"


def _get(url: str, timeout: float) -> tuple[int, str]:
    """``GET url`` -> (status, body); any status is an answer, no answer raises."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EndpointUnreachable(
            f"cannot reach the metrics endpoint {url}: {reason} (is the process running "
            "with a [metrics] table, on this host and port?)"
        ) from None


def _fetch(base: str, timeout: float) -> tuple[tuple[int, str], tuple[int, str]]:
    return _get(f"{base}/metrics", timeout), _get(f"{base}/readyz", timeout)


def parse_metrics(text: str) -> tuple[tuple[ReaderRow, ...], tuple[PoolRow, ...]]:
    """The readers and pools in the Prometheus text ``text`` (names of :mod:`otpy.pg.metrics`).

    Raises:
        StatusParserMissing: ``prometheus_client`` is not installed.
    """
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        raise StatusParserMissing(
            "otpy status needs prometheus_client to read /metrics: "
            "pip install 'trio-otp-pg[metrics]'"
        ) from None
    readers: dict[str, dict[str, Any]] = {}
    pools: dict[str, dict[str, Any]] = {}
    reader_fields: dict[str, tuple[str, Callable[[float], Any]]] = {
        "otpy_reader_lag_bytes": ("lag_bytes", int),
        "otpy_reader_lag_seconds": ("lag_seconds", float),
        "otpy_reader_transactions_total": ("transactions", int),
        "otpy_reader_changes_total": ("changes", int),
        "otpy_reader_restarts_total": ("restarts", int),
    }
    pool_fields: dict[str, str] = {
        "otpy_pool_size": "size",
        "otpy_pool_waiting": "waiting",
        "otpy_pool_timeouts_total": "timeouts",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if "slot" in labels and name.startswith("otpy_reader_"):
                row = readers.setdefault(labels["slot"], {"slot": labels["slot"]})
                if name in reader_fields:
                    field, convert = reader_fields[name]
                    row[field] = convert(value)
                elif name == "otpy_reader_state" and value == 1:
                    row["state"] = labels.get("state")
                elif name == "otpy_reader_last_error_info":
                    row["last_error"] = labels.get("error")
            elif "pool" in labels and name.startswith("otpy_pool_"):
                row = pools.setdefault(labels["pool"], {"name": labels["pool"]})
                if name in pool_fields:
                    row[pool_fields[name]] = int(value)
                elif name == "otpy_pool_connections" and labels.get("state") in ("idle", "in_use"):
                    row[labels["state"]] = int(value)
    return (
        tuple(ReaderRow(**readers[k]) for k in sorted(readers)),
        tuple(PoolRow(**pools[k]) for k in sorted(pools)),
    )


def _snapshot(base: str, metrics: tuple[int, str], ready: tuple[int, str]) -> StatusSnapshot:
    status, body = metrics
    if status != 200:
        raise EndpointUnreachable(
            f"{base}/metrics answered {status}: {' '.join(body.split())[:200]} "
            "(is this an otpy metrics endpoint, with prometheus_client installed in the process?)"
        )
    readers, pools = parse_metrics(body)
    ready_status, ready_body = ready
    is_ready = ready_status == 200
    problems = tuple(line.strip() for line in ready_body.splitlines() if line.strip())
    return StatusSnapshot(
        url=base,
        ready=is_ready,
        problems=() if is_ready else problems or (f"/readyz answered {ready_status}",),
        readers=readers,
        pools=pools,
        taken_at=time.time(),
    )


async def fetch_status(base: str, *, request_timeout: float = 5.0) -> StatusSnapshot:
    """Fetch and parse ``/metrics`` and ``/readyz`` of the endpoint at ``base``.

    The HTTP requests run in a worker thread (the standard library's client):
    the trio run stays responsive, and no dependency is needed for two GETs.

    Raises:
        EndpointUnreachable: no answer, or ``/metrics`` did not answer 200.
        StatusParserMissing: ``prometheus_client`` is not installed.
    """
    import trio

    metrics, ready = await trio.to_thread.run_sync(_fetch, base, request_timeout)
    return _snapshot(base, metrics, ready)


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}s"


def format_status(snap: StatusSnapshot) -> str:
    """The human form: a readers table, a pools table and the readiness line."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.taken_at))
    reader_rows: Iterable[list[Any]] = (
        [
            r.slot,
            r.state,
            human_bytes(r.lag_bytes),
            _seconds(r.lag_seconds),
            r.transactions,
            r.changes,
            r.restarts,
            r.last_error,
        ]
        for r in snap.readers
    )
    pool_rows = [[p.name, p.size, p.idle, p.in_use, p.waiting, p.timeouts] for p in snap.pools]
    readiness = "ready" if snap.ready else "not ready: " + "; ".join(snap.problems)
    return "\n".join(
        [
            f"otpy status of {snap.url} at {when}",
            "",
            "readers",
            format_table(
                (
                    "slot",
                    "state",
                    "lag",
                    "lag time",
                    "transactions",
                    "changes",
                    "restarts",
                    "last error",
                ),
                list(reader_rows),
            )
            if snap.readers
            else "(none)",
            "",
            "pools",
            format_table(("pool", "size", "idle", "in use", "waiting", "timeouts"), pool_rows)
            if snap.pools
            else "(none)",
            "",
            readiness,
        ]
    )


def _to_json(snap: StatusSnapshot) -> str:
    return json.dumps(attrs.asdict(snap), separators=(",", ":"))


async def run_status(
    base: str, *, watch: float | None, as_json: bool, request_timeout: float, out: TextIO
) -> None:
    """Print the status once, or every ``watch`` seconds until interrupted."""
    import trio

    clear = watch is not None and not as_json and out.isatty()
    first = True
    while True:
        try:
            snap = await fetch_status(base, request_timeout=request_timeout)
        except EndpointUnreachable as exc:
            if watch is None:
                raise
            text = json.dumps({"url": base, "error": str(exc)}) if as_json else str(exc)
        else:
            text = _to_json(snap) if as_json else format_status(snap)
        if clear:
            text = _CLEAR + text
        elif watch is not None and not as_json and not first:
            text = "\n" + text
        print(text, file=out, flush=True)
        if watch is None:
            return
        first = False
        await trio.sleep(watch)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds > 0, got {text!r}")
    return value


def register(commands: Any, parents: list[Any]) -> None:
    """Add the ``status`` command to the ``otpy`` sub-command parsers."""
    status = commands.add_parser(
        "status",
        parents=parents,
        help="readers and pools of a running process, from its metrics endpoint",
    )
    status.add_argument(
        "--url", help="the endpoint's base URL, e.g. http://127.0.0.1:9187 (default: --host/--port)"
    )
    status.add_argument(
        "--host", default=_DEFAULTS.host, help=f"host of the endpoint (default {_DEFAULTS.host})"
    )
    status.add_argument(
        "--port",
        type=int,
        default=_DEFAULTS.port,
        help=f"port of the endpoint (default {_DEFAULTS.port})",
    )
    status.add_argument(
        "--watch", type=_positive, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C"
    )
    status.add_argument("--json", action="store_true", help="the parsed snapshot as JSON")
    status.add_argument(
        "--timeout", type=_positive, default=5.0, help="seconds to wait for an answer (default 5)"
    )
    status.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    """Run ``otpy status``; ``otpy.cli.main`` turns what it raises into one line and a code."""
    import trio

    base = status_url(args.url, args.host, args.port)
    try:
        trio.run(
            lambda: run_status(
                base,
                watch=args.watch,
                as_json=args.json,
                request_timeout=args.timeout,
                out=sys.stdout,
            )
        )
    except KeyboardInterrupt:
        if args.watch is None:
            raise
        return EXIT_INTERRUPTED  # Ctrl-C is how a watch ends: no message
    return EXIT_OK
