"""``examples/two_way_sync.py``: two tables sync each other exactly once, with no echo."""

from __future__ import annotations

import pytest
import trio
import two_way_sync


async def test_two_tables_sync_each_other_without_echo(module_dsn: str) -> None:
    with trio.fail_after(60):
        report = await two_way_sync.main(module_dsn, rows=5)
    assert (report.rows_a, report.rows_b) == (10, 10)
    # Each direction applied exactly the other side's 5 transactions: nothing came back.
    assert report.applied == {"two_way_a": 5, "two_way_b": 5}
    if report.server_filters_origin:  # PostgreSQL 16+: the echo is never even sent
        assert report.echoes_skipped == {"two_way_a": 0, "two_way_b": 0}
    else:  # filtered on the client by the transaction's origin
        assert report.echoes_skipped == {"two_way_a": 5, "two_way_b": 5}


async def test_without_loop_prevention_the_changes_echo_back(module_dsn: str) -> None:
    """The contrast: what the origin filter prevents."""
    with trio.fail_after(60):
        report = await two_way_sync.main(module_dsn, rows=2, loop_prevention=False)
    assert max(report.applied.values()) > 2
    assert report.echoes_skipped == {"two_way_a": 0, "two_way_b": 0}


@pytest.mark.requires("pg16")
async def test_a_reader_with_origin_none_is_not_sent_the_tagged_writes(module_dsn: str) -> None:
    with trio.fail_after(60):
        report = await two_way_sync.main(module_dsn, rows=3)
    assert report.server_filters_origin
    assert report.applied == {"two_way_a": 3, "two_way_b": 3}
    assert report.echoes_skipped == {"two_way_a": 0, "two_way_b": 0}
