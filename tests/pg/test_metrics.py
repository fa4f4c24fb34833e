"""Pure logic of the metrics, without a server: slot risk, heartbeat bookkeeping, histograms."""

from __future__ import annotations

import time

import pytest

from otpy.pg.metrics import _histogram
from otpy.pg.wal_reader.metrics import ReaderCounters
from otpy.pg.wal_reader.watch import SlotHealth

MB = 1024 * 1024


def _health(
    retained: int, status: str = "reserved", limit: int | None = 4 * MB, why: str | None = None
) -> SlotHealth:
    return SlotHealth(retained, status, None, limit, why)


@pytest.mark.parametrize(
    ("health", "risk"),
    [
        (_health(1 * MB), None),
        (_health(2 * MB), "retention"),  # exactly half of the budget
        (_health(3 * MB, "extended"), "retention"),
        (_health(100 * MB, limit=None), None),  # no limit: nothing to warn about
        (_health(1 * MB, "unreserved"), "wal_status"),
        (_health(0, "lost"), "invalidated"),
        (_health(0, "lost", why="wal_removed"), "invalidated"),
    ],
)
def test_a_slot_is_at_risk_from_half_its_wal_budget_or_when_invalidated(
    health: SlotHealth, risk: str | None
) -> None:
    assert health.risk == risk
    assert (health.warning() is None) == (risk is None)


def test_the_invalidation_reason_is_named_in_the_warning() -> None:
    warning = _health(0, "lost", why="wal_removed").warning()
    assert warning is not None and "wal_removed" in warning


def test_only_this_slots_heartbeats_count_and_an_old_unseen_one_is_overdue() -> None:
    counters = ReaderCounters()
    counters.heartbeat_timeout = 5.0
    now = time.time()
    counters.heartbeat_sent(now - 10)
    counters.heartbeat_sent(now - 1)
    counters.heartbeat_seen(f"other_slot {now - 10!r}".encode(), "mine")
    assert counters.heartbeats_received == 0
    snap = counters.snapshot("mine", "db", streaming=True, ended=False, starts=1)
    assert snap.heartbeat_overdue and not snap.healthy
    counters.heartbeat_seen(f"mine {now - 10!r}".encode(), "mine")
    snap = counters.snapshot("mine", "db", streaming=True, ended=False, starts=1)
    assert counters.heartbeats_received == 1
    assert not snap.heartbeat_overdue and snap.healthy  # the next one is 1 s old
    counters.heartbeat_seen(b"mine not-a-number", "mine")
    assert counters.heartbeats_received == 1


def test_histograms_are_exported_cumulatively_with_an_inf_bucket() -> None:
    buckets, total = _histogram(((0.1, 2), (1.0, 3), (float("inf"), 1)))
    assert buckets == [("0.1", 2.0), ("1.0", 5.0), ("+Inf", 6.0)]
    assert total == 6


def test_a_reader_state_follows_its_subscription() -> None:
    counters = ReaderCounters()
    assert counters.snapshot("s", "d", streaming=False, ended=False, starts=0).state == "starting"
    counters.standby = True
    assert counters.snapshot("s", "d", streaming=False, ended=False, starts=0).state == "standby"
    snap = counters.snapshot("s", "d", streaming=True, ended=False, starts=3)
    assert (snap.state, snap.restarts) == ("streaming", 2)
    assert counters.snapshot("s", "d", streaming=False, ended=True, starts=3).state == "stopped"
