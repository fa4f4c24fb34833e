"""A primary and a physical standby made with pg_basebackup, for the failover tests.

Built only on :class:`otpy.pg.testing.PostgresServer`'s public API: the standby is
a throw-away server whose data directory is replaced by a base backup of the
primary (taken as the server's own system user when we are root), then
started with the standby settings.

Settings (the PostgreSQL 17+ failover-slot recipe):

* primary: ``synchronized_standby_slots`` names the standby's physical slot,
  so a logical walsender of a failover slot sends nothing the standby has not
  received; ``synchronous_standby_names = '*'`` with ``synchronous_commit =
  on`` so that a commit the client saw is on the standby too (what the test
  counts as committed is then also what survives the failover);
* standby: ``primary_slot_name``, ``hot_standby_feedback``,
  ``sync_replication_slots`` (the slot sync worker copies failover slots) and
  a ``primary_conninfo`` with ``dbname`` (the worker needs one).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator

import psycopg
import trio
from psycopg.conninfo import make_conninfo

from otpy.pg.connection import TrioConnection
from otpy.pg.testing import PostgresServer

#: The standby's physical slot on the primary.
PHYSICAL_SLOT = "standby_phys"


def _as_server_user() -> dict[str, object]:
    """subprocess arguments that run a tool as the server's user (``postgres`` when root)."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam("postgres")
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def server_version(server: PostgresServer) -> int:
    with psycopg.connect(server.dsn) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
        assert row is not None
        return int(row[0])


@contextlib.contextmanager
def primary_and_standby(
    *, failover_slots: bool = True
) -> Iterator[tuple[PostgresServer, PostgresServer]]:
    """A running primary and a streaming hot standby of it; both removed afterwards."""
    primary_settings = {"synchronous_commit": "on", "synchronous_standby_names": "*"}
    if failover_slots:
        primary_settings["synchronized_standby_slots"] = PHYSICAL_SLOT
    primary = PostgresServer(settings=primary_settings)
    standby = PostgresServer()
    try:
        primary.start()
        with psycopg.connect(primary.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_create_physical_replication_slot(%s)", [PHYSICAL_SLOT])
        standby.bindir = primary.bindir
        standby.start()  # a cluster of its own, for its directory, port and user
        standby.stop()
        shutil.rmtree(standby.datadir)
        assert primary.bindir is not None
        backup = subprocess.run(
            [
                str(primary.bindir / "pg_basebackup"),
                "-d",
                primary.dsn,
                "-D",
                str(standby.datadir),
                "-X",
                "stream",
                "-R",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            check=False,
            **_as_server_user(),  # type: ignore[arg-type]
        )
        assert backup.returncode == 0, backup.stderr
        standby.settings = {
            "primary_conninfo": make_conninfo(primary.dsn, application_name="standby"),
            "primary_slot_name": PHYSICAL_SLOT,
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            **({"sync_replication_slots": "on"} if failover_slots else {}),
        }
        standby.start()
        yield primary, standby
    finally:
        standby.cleanup()
        primary.cleanup()


async def wait_until(check_sql: str, dsn: str, params: list[object], within: float) -> None:
    """Run ``check_sql`` on ``dsn`` until it returns a true first column, within a deadline."""
    with trio.fail_after(within):
        while True:
            with contextlib.suppress(psycopg.OperationalError):
                async with await TrioConnection.connect(dsn, autocommit=True) as conn:
                    cur = await conn.execute(check_sql, params)  # type: ignore[arg-type]
                    row = await cur.fetchone()
                    if row is not None and row[0]:
                        return
            await trio.sleep(0.05)
