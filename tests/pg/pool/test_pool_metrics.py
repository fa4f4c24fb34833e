"""Pool metrics: waiters, checkout waits, hold times, the long-hold warning with its stack."""

from __future__ import annotations

import logging

import pytest
import trio
from obs_helpers import wait_until
from pool_helpers import pool_config

from otpy.pg import pool
from otpy.pg.config import DatabaseConfig
from otpy.pg.pool.manager import lookup


class _Catch(logging.Handler):
    """Collects the records of one event and wakes a trio waiter (runs in the trio thread)."""

    def __init__(self, event: str) -> None:
        super().__init__()
        self.event = event
        self.records: list[logging.LogRecord] = []
        self.arrived = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == self.event:
            self.records.append(record)
            self.arrived.set()


async def _hold_connection_until(release: trio.Event, held: trio.Event) -> None:
    async with pool.connection("p"):
        held.set()
        await release.wait()


async def test_a_starved_pool_shows_waiters_and_warns_once_with_the_holders_stack(
    db: DatabaseConfig,
) -> None:
    catch = _Catch("pool_connection_held_long")
    logger = logging.getLogger("otpy.pg.pool")
    logger.addHandler(catch)
    try:
        async with (
            pool.open_pool(
                "p", pool_config(1), db, leak_check_interval=0.05, hold_warning=0.2
            ) as p,
            trio.open_nursery() as nursery,
        ):
            release, held = trio.Event(), trio.Event()
            nursery.start_soon(_hold_connection_until, release, held)
            await held.wait()
            waiter_done = trio.Event()

            async def waiter() -> None:
                await p.query("SELECT 1")
                waiter_done.set()

            nursery.start_soon(waiter)
            with trio.fail_after(10):
                await p.wait_for(lambda s: s.waiting == 1)
            stats = p.stats()
            assert (stats.size, stats.in_use, stats.idle, stats.waiting) == (1, 1, 0, 1)

            with trio.fail_after(10):
                await catch.arrived.wait()
            (record,) = catch.records
            assert record.levelno == logging.WARNING
            assert record.pool == "p"  # type: ignore[attr-defined]
            assert record.held_seconds > 0.2  # type: ignore[attr-defined]
            # The stack of the task that holds it: where it sits, in this file.
            assert "_hold_connection_until" in record.getMessage()
            assert "test_pool_metrics.py" in record.getMessage()
            # Once per checkout: later sweeps do not repeat it.
            assert lookup("p").warn_long_holds(0.2) == 0
            assert p.stats().held_too_long == 1

            release.set()
            with trio.fail_after(10):
                await waiter_done.wait()
            stats = p.stats()
            assert stats.waiting == 0
            assert stats.waited_checkouts == 1
            assert stats.wait_time_max > 0.2
            # Both check-ins measured; the long hold is in a bucket above 0.1 s.
            assert sum(n for _, n in stats.hold_histogram) == 2
            assert sum(n for bound, n in stats.hold_histogram if bound > 0.1) >= 1
            assert stats.hold_time_total > 0.2
    finally:
        logger.removeHandler(catch)


async def test_timing_off_measures_no_hold_times_and_never_warns(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1), db, timing=False, hold_warning=0.01) as p:
        async with p.connection():
            await trio.sleep(0.05)  # a holder that takes its time, not a wait for something
            assert lookup("p").warn_long_holds(0.01) == 0
        stats = p.stats()
        assert stats.checkouts == 1
        assert sum(n for _, n in stats.hold_histogram) == 0


async def test_connections_closed_add_up_the_reasons(db: DatabaseConfig) -> None:
    async with pool.open_pool("p", pool_config(1), db) as p:
        async with p.connection() as conn:
            await conn.close()  # replaced by its worker
        await wait_until(lambda: p.stats().connections_opened == 2)
        stats = p.stats()
        assert stats.connections_closed == (
            stats.connections_lost + stats.connections_replaced + stats.connections_closed_idle
        )
        assert stats.connections_closed == 1


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "5"])
async def test_hold_warning_must_be_positive_seconds(db: DatabaseConfig, bad: object) -> None:
    from otpy.pg.errors import ConfigError

    with pytest.raises(ConfigError, match="hold_warning"):
        async with pool.open_pool("p", pool_config(1), db, hold_warning=bad):  # type: ignore[arg-type]
            pass
