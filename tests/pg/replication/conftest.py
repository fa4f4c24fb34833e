"""Fixtures of the replication decoder tests (helpers live in tests/support/pgcapture.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from pgcapture import Capture

from otpy.pg.testing import PostgresServer


@pytest.fixture
def capture_factory(module_dsn: str) -> Iterator[type[Capture]]:
    """Create captures on the module database; drops their slots afterwards."""
    made: list[Capture] = []

    def make(tables: Sequence[str] | None = None, *, two_phase: bool = False) -> Capture:
        cap = Capture(module_dsn, tables, two_phase=two_phase)
        made.append(cap)
        return cap

    yield make  # type: ignore[misc]
    for cap in made:
        cap.drop()


@pytest.fixture(scope="session")
def twophase_server() -> Iterator[PostgresServer]:
    """A server of our own with ``max_prepared_transactions`` > 0 (for two-phase tests)."""
    with PostgresServer(settings={"max_prepared_transactions": "10"}) as server:
        yield server
