"""Fixtures of the WAL reader tests: a readers supervisor per test.

Everything runs against the session's real PostgreSQL (``module_dsn``); nothing
is mocked.  Waiting is done on events with deadlines, never on sleeps.
"""

from __future__ import annotations
