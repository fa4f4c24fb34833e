"""Fixtures of the snapshot tests: a readers supervisor per test, the WAL reader helpers.

Everything runs against the session's real PostgreSQL (``module_dsn``); nothing
is mocked.  Waiting is done on events with deadlines, never on sleeps.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The recording handler and SQL helpers of the WAL reader tests (wr_helpers).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "wal_reader"))
