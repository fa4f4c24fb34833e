"""Metrics of the connector: in-process snapshots, and their Prometheus exposition.

Two layers, so that reading the numbers never costs the hot paths anything:

* **In process** (no dependency): :func:`snapshot` returns a frozen
  :class:`MetricsSnapshot` with one :class:`~otpy.pg.pool.PoolStats` per
  running pool and one :class:`~otpy.pg.wal_reader.metrics.ReaderMetrics` per
  live subscription.  The pools and readers only increment plain attributes
  where things happen; a snapshot reads them (no I/O, no message), so it can
  be taken as often as wanted.
* **Prometheus** (the optional extra ``trio-otp-pg[metrics]``, i.e.
  ``prometheus_client``): :class:`OtpyCollector` is a custom collector that
  turns a snapshot into metric families *at scrape time*, and
  :func:`exposition` renders them with ``prometheus_client.generate_latest``.
  Why not ``Counter``/``Histogram`` objects updated on every event: they take
  a lock per update, and the numbers already exist as counters; a collector
  reads them once per scrape instead.  :mod:`otpy.pg.health` serves the text
  on ``/metrics`` beside ``/healthz`` and ``/readyz``.

The metric names and their meaning are listed in ``docs/operations.md``
("Metrics"), with what to alert on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from otpy.pg.pool import PoolStats
from otpy.pg.pool.manager import running_cores
from otpy.pg.wal_reader import subscriptions
from otpy.pg.wal_reader.metrics import ReaderMetrics
from otpy.supervisor import live_supervisors

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "MetricsSnapshot",
    "MetricsUnavailable",
    "OtpyCollector",
    "exposition",
    "make_registry",
    "readiness",
    "snapshot",
]


class MetricsUnavailable(ImportError):
    """The Prometheus exposition needs ``prometheus_client``, which is not installed.

    Install the extra: ``pip install 'trio-otp-pg[metrics]'``.  The in-process
    snapshots (:func:`snapshot`) work without it.
    """


@attrs.frozen
class MetricsSnapshot:
    """Every pool and reader of this process at one instant (see :func:`snapshot`)."""

    pools: tuple[PoolStats, ...]
    """One entry per running pool, in no particular order."""
    readers: tuple[ReaderMetrics, ...]
    """One entry per live subscription."""
    taken_at: float
    """Unix time of the snapshot."""
    supervisor_restarts: tuple[tuple[str, int], ...] = ()
    """``(label, restarts)`` per running supervisor (label: its registered name, else its ref)."""


def snapshot() -> MetricsSnapshot:
    """The current :class:`MetricsSnapshot` of this process (no I/O, no message)."""
    return MetricsSnapshot(
        pools=tuple(core.stats() for core in running_cores()),
        readers=tuple(sub.metrics() for sub in subscriptions()),
        taken_at=time.time(),
        supervisor_restarts=tuple((sup.label, sup.restarts) for sup in live_supervisors()),
    )


def readiness(snap: MetricsSnapshot | None = None) -> list[str]:
    """Why the process is not ready, one sentence per problem (empty: ready).

    Ready means: every pool has an open connection (or needs none:
    ``min_size`` 0 and not down), and every reader streams (or stands by for
    a slot used elsewhere, as designed) with no heartbeat overdue.
    """
    snap = snapshot() if snap is None else snap
    problems: list[str] = []
    for pool in snap.pools:
        if pool.down:
            problems.append(f"pool {pool.name!r} is down: {pool.last_error}")
        elif pool.min_size > 0 and pool.idle + pool.in_use + pool.busy == 0:
            problems.append(f"pool {pool.name!r} has no open connection yet")
    for reader in snap.readers:
        if reader.state not in ("streaming", "standby"):
            problems.append(f"reader of slot {reader.slot!r} is {reader.state}")
        elif reader.heartbeat_overdue:
            problems.append(f"reader of slot {reader.slot!r}: a heartbeat did not come back")
    return problems


_READER_STATES = ("streaming", "standby", "starting", "stopped")
_WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")


def _histogram(
    pairs: Sequence[tuple[float, int]],
) -> tuple[list[tuple[str, float]], int]:
    """Per-bucket counts -> Prometheus cumulative ``(le, count)`` and the total."""
    out: list[tuple[str, float]] = []
    total = 0
    for bound, count in pairs:
        total += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
    return out, total


class OtpyCollector:
    """A ``prometheus_client`` collector reading :func:`snapshot` at each scrape.

    Register it in a registry of your own (``registry.register(OtpyCollector())``)
    or use :func:`make_registry`.
    """

    def describe(self) -> list[Any]:
        """No fixed description: the metrics are produced at collection time."""
        return []

    def collect(self) -> Iterator[Any]:
        """Yield the metric families of the current snapshot."""
        try:
            from prometheus_client.core import (
                CounterMetricFamily,
                GaugeMetricFamily,
                HistogramMetricFamily,
                InfoMetricFamily,
            )
        except ImportError as exc:  # pragma: no cover - the extra is installed in dev
            raise _unavailable() from exc

        snap = snapshot()

        def gauge(name: str, doc: str, labels: Iterable[str] = ("slot",)) -> Any:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        def counter(name: str, doc: str, labels: Iterable[str] = ("slot",)) -> Any:
            return CounterMetricFamily(name, doc, labels=list(labels))

        # -- readers
        r = snap.readers
        state = gauge("otpy_reader_state", "1 for the reader's current state", ("slot", "state"))
        healthy = gauge("otpy_reader_healthy", "1 when streaming with no heartbeat overdue")
        received = gauge("otpy_reader_received_lsn", "highest WAL position received (bytes)")
        acked = gauge("otpy_reader_acknowledged_lsn", "flush position confirmed (bytes)")
        wal_end = gauge("otpy_reader_server_wal_end_lsn", "server WAL end seen in the stream")
        lag_b = gauge("otpy_reader_lag_bytes", "server WAL end minus acknowledged position")
        lag_s = gauge(
            "otpy_reader_lag_seconds", "age of the oldest unacknowledged transaction's commit"
        )
        last_commit = gauge(
            "otpy_reader_last_acknowledged_commit_timestamp_seconds",
            "commit time of the last acknowledged transaction (or heartbeat)",
        )
        txns = counter("otpy_reader_transactions", "transactions handled and acknowledged")
        changes = counter("otpy_reader_changes", "changes delivered to the handler")
        handler = HistogramMetricFamily(
            "otpy_reader_handler_duration_seconds",
            "time spent in handle_replication_data per call",
            labels=["slot"],
        )
        depth = gauge("otpy_reader_queue_depth", "batches received and not yet handled")
        restarts = counter("otpy_reader_restarts", "restarts of the reader after its first start")
        error = InfoMetricFamily(
            "otpy_reader_last_error", "why the reader last crashed", labels=["slot"]
        )
        hb_sent = counter("otpy_reader_heartbeats_sent", "heartbeats emitted")
        hb_seen = counter("otpy_reader_heartbeats_received", "heartbeats seen back in the stream")
        hb_overdue = gauge("otpy_reader_heartbeat_overdue", "1 when a heartbeat is overdue")
        retained = gauge("otpy_reader_slot_retained_bytes", "WAL the slot keeps (restart_lsn)")
        retained_ratio = gauge(
            "otpy_reader_slot_retained_ratio", "retained WAL / max_slot_wal_keep_size"
        )
        safe = gauge("otpy_reader_slot_safe_wal_size_bytes", "WAL writable before danger")
        wal_status = gauge(
            "otpy_reader_slot_wal_status", "1 for the slot's wal_status", ("slot", "status")
        )
        for m in r:
            slot = [m.slot]
            for name in _READER_STATES:
                state.add_metric([m.slot, name], 1.0 if m.state == name else 0.0)
            healthy.add_metric(slot, 1.0 if m.healthy else 0.0)
            received.add_metric(slot, float(m.received_lsn))
            acked.add_metric(slot, float(m.acknowledged_lsn))
            wal_end.add_metric(slot, float(m.server_wal_end))
            lag_b.add_metric(slot, float(m.lag_bytes))
            lag_s.add_metric(slot, m.lag_seconds)
            if m.last_acknowledged_commit_time is not None:
                last_commit.add_metric(slot, m.last_acknowledged_commit_time.timestamp())
            txns.add_metric(slot, m.transactions)
            changes.add_metric(slot, m.changes)
            buckets, _ = _histogram(m.handler_histogram)
            handler.add_metric(slot, buckets, m.handler_seconds_total)
            depth.add_metric(slot, m.queue_depth)
            restarts.add_metric(slot, m.restarts)
            if m.last_error is not None:
                error.add_metric(slot, {"error": m.last_error[:200]})
            hb_sent.add_metric(slot, m.heartbeats_sent)
            hb_seen.add_metric(slot, m.heartbeats_received)
            hb_overdue.add_metric(slot, 1.0 if m.heartbeat_overdue else 0.0)
            h = m.slot_health
            if h is not None:
                retained.add_metric(slot, h.retained_bytes)
                if h.retained_fraction is not None:
                    retained_ratio.add_metric(slot, h.retained_fraction)
                if h.safe_wal_size is not None:
                    safe.add_metric(slot, h.safe_wal_size)
                for status in _WAL_STATUSES:
                    wal_status.add_metric([m.slot, status], 1.0 if h.wal_status == status else 0.0)
        yield from (state, healthy, received, acked, wal_end, lag_b, lag_s, last_commit)
        yield from (txns, changes, handler, depth, restarts, error, hb_sent, hb_seen, hb_overdue)
        yield from (retained, retained_ratio, safe, wal_status)

        # -- pools
        pool = ("pool",)
        conns = gauge("otpy_pool_connections", "connections by state", ("pool", "state"))
        size = gauge("otpy_pool_size", "connection slots (open or opening)", pool)
        min_size = gauge("otpy_pool_min_size", "connections kept open", pool)
        max_size = gauge("otpy_pool_max_size", "connections allowed at most", pool)
        waiting = gauge("otpy_pool_waiting", "callers queued for a connection", pool)
        down = gauge("otpy_pool_down", "1 while the pool cannot connect", pool)
        checkouts = counter("otpy_pool_checkouts", "connections handed out", pool)
        wait = HistogramMetricFamily(
            "otpy_pool_checkout_wait_seconds", "time a checkout waited", labels=["pool"]
        )
        hold = HistogramMetricFamily(
            "otpy_pool_connection_hold_seconds", "time a caller held a connection", labels=["pool"]
        )
        timeouts = counter("otpy_pool_timeouts", "checkouts that timed out", pool)
        overloaded = counter("otpy_pool_overloaded", "checkouts refused (max_waiting)", pool)
        unavailable = counter("otpy_pool_unavailable", "checkouts refused: pool down", pool)
        errors = counter("otpy_pool_connection_errors", "failed connection attempts", pool)
        opened = counter("otpy_pool_connections_opened", "connections opened", pool)
        closed = counter(
            "otpy_pool_connections_closed", "connections closed, by reason", ("pool", "reason")
        )
        rollbacks = counter("otpy_pool_rollbacks", "connections returned dirty, rolled back", pool)
        leaked = counter("otpy_pool_leaked", "connections reclaimed from ended tasks", pool)
        held_long = counter(
            "otpy_pool_held_too_long", "checkouts held past the hold_warning threshold", pool
        )
        for p in snap.pools:
            key = [p.name]
            for label, value in (
                ("idle", p.idle),
                ("in_use", p.in_use),
                ("busy", p.busy),
                ("connecting", p.connecting),
            ):
                conns.add_metric([p.name, label], value)
            size.add_metric(key, p.size)
            min_size.add_metric(key, p.min_size)
            max_size.add_metric(key, p.max_size)
            waiting.add_metric(key, p.waiting)
            down.add_metric(key, 1.0 if p.down else 0.0)
            checkouts.add_metric(key, p.checkouts)
            buckets, _ = _histogram(p.wait_histogram)
            wait.add_metric(key, buckets, p.wait_time_total)
            if p.hold_histogram:
                buckets, _ = _histogram(p.hold_histogram)
                hold.add_metric(key, buckets, p.hold_time_total)
            timeouts.add_metric(key, p.timeouts)
            overloaded.add_metric(key, p.overloaded)
            unavailable.add_metric(key, p.unavailable)
            errors.add_metric(key, p.connection_errors)
            opened.add_metric(key, p.connections_opened)
            for reason, value in (
                ("lost", p.connections_lost),
                ("replaced", p.connections_replaced),
                ("idle", p.connections_closed_idle),
            ):
                closed.add_metric([p.name, reason], value)
            rollbacks.add_metric(key, p.rollbacks)
            leaked.add_metric(key, p.leaked)
            held_long.add_metric(key, p.held_too_long)
        yield from (conns, size, min_size, max_size, waiting, down, checkouts, wait, hold)
        yield from (timeouts, overloaded, unavailable, errors, opened, closed, rollbacks)
        yield from (leaked, held_long)

        # -- runtime
        sup_restarts = counter(
            "otpy_supervisor_restarts", "children restarted by the supervisor", ("supervisor",)
        )
        for label, count in snap.supervisor_restarts:
            sup_restarts.add_metric([label], count)
        yield sup_restarts


def _unavailable() -> MetricsUnavailable:
    return MetricsUnavailable(
        "the Prometheus exposition needs prometheus_client: pip install 'trio-otp-pg[metrics]' "
        "(otpy.pg.metrics.snapshot() works without it)"
    )


def make_registry() -> CollectorRegistry:
    """A fresh ``prometheus_client`` registry holding an :class:`OtpyCollector`.

    Raises:
        MetricsUnavailable: ``prometheus_client`` is not installed.
    """
    try:
        from prometheus_client import CollectorRegistry
    except ImportError as exc:
        raise _unavailable() from exc
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OtpyCollector())
    return registry


def exposition(registry: CollectorRegistry | None = None) -> bytes:
    """The Prometheus text exposition of ``registry`` (default: a fresh :func:`make_registry`).

    Raises:
        MetricsUnavailable: ``prometheus_client`` is not installed.
    """
    try:
        from prometheus_client import generate_latest
    except ImportError as exc:
        raise _unavailable() from exc
    return generate_latest(make_registry() if registry is None else registry)
