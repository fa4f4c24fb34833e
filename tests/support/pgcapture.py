"""Capture real pgoutput bytes from a test server, without the replication protocol.

``pg_logical_slot_peek_binary_changes`` runs the pgoutput plugin inside a
normal backend and returns one row per message (the XLogData payloads a
walsender would send).  *Peeking* leaves the slot where it is, so one workload
can be decoded with several option sets (protocol 1-3, text/binary).

A module of its own (not conftest.py) so that tests can import it by a unique
name whatever pytest's import mode.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import psycopg
from psycopg import sql

__all__ = ["Capture", "execute"]

_counter = itertools.count()


class Capture:
    """A publication + logical slot on a database, and peeks of its pgoutput stream."""

    def __init__(
        self, dsn: str, tables: Sequence[str] | None = None, *, two_phase: bool = False
    ) -> None:
        self.dsn = dsn
        n = next(_counter)
        self.slot = f"cap_slot_{n}"
        self.publication = f"cap_pub_{n}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            target = (
                sql.SQL("FOR TABLE {}").format(
                    sql.SQL(", ").join(sql.Identifier(*t.split(".")) for t in tables)
                )
                if tables
                else sql.SQL("FOR ALL TABLES")
            )
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} {}").format(sql.Identifier(self.publication), target)
            )
            conn.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'pgoutput', false, %s)",
                [self.slot, two_phase],
            )

    def peek(
        self,
        proto: int = 1,
        *,
        binary: bool = False,
        messages: bool = False,
        streaming: bool | str = False,
        two_phase: bool = False,
        work_mem: str | None = None,
    ) -> list[bytes]:
        """The pgoutput messages of everything since the slot was created.

        ``streaming`` is True for ``on``, or the option's value (``"parallel"``,
        protocol 4, PostgreSQL 16+).
        """
        options = ["proto_version", str(proto), "publication_names", self.publication]
        if binary:
            options += ["binary", "true"]
        if messages:
            options += ["messages", "true"]
        if streaming:
            options += ["streaming", "on" if streaming is True else str(streaming)]
        if two_phase:
            options += ["two_phase", "on"]
        placeholders = ", ".join(["%s"] * len(options))
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            # The test server runs with synchronous_commit=off and the SQL functions
            # decode only flushed WAL: a checkpoint flushes everything written so far.
            conn.execute("CHECKPOINT")
            if work_mem:
                conn.execute(
                    sql.SQL("SET logical_decoding_work_mem = {}").format(sql.Literal(work_mem))
                )
            rows = conn.execute(
                f"SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
                f"{placeholders})",
                [self.slot, *options],
            ).fetchall()
        return [bytes(row[0]) for row in rows]

    def drop(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", [self.slot])
            conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(self.publication)))


def execute(dsn: str, *statements: str) -> None:
    """Run statements in autocommit mode (each its own transaction unless it says BEGIN)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]
