"""Fixtures of the snapshot tests: a readers supervisor per test, the WAL reader helpers.

Everything runs against the session's real PostgreSQL (``module_dsn``); nothing
is mocked.  Waiting is done on events with deadlines, never on sleeps.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from otpy import DynamicSupervisor, Ref
from otpy import start as start_actor
from otpy.pg import wal_reader

# The recording handler and SQL helpers of the WAL reader tests (wr_helpers).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "wal_reader"))


@pytest.fixture
async def readers() -> AsyncIterator[Ref]:
    """A WAL readers supervisor registered under the default name, for one test."""
    async with trio.open_nursery() as nursery:
        sup = await start_actor(
            nursery,
            DynamicSupervisor(intensity=1000, period=60),
            name=wal_reader.READERS_SUPERVISOR,
        )
        yield sup
        nursery.cancel_scope.cancel()
