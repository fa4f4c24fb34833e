"""The psycopg2 + pypgoutput peer of benchmarks/replication.py (runs in its own venv).

``python replication_peer.py DSN SLOT PUBLICATION ROWS``: streams the slot with
psycopg2's LogicalReplicationConnection, decodes every message with
pypgoutput's decoders, builds a ``{column: text}`` dict per row (pypgoutput
does not convert types), acknowledges at each commit, and stops after ROWS rows.
Prints the elapsed seconds and the rows seen.
"""

import contextlib
import sys
import time

import psycopg2
import psycopg2.extras
from pypgoutput import decoders

DECODERS = {
    "B": decoders.Begin,
    "C": decoders.Commit,
    "R": decoders.Relation,
    "I": decoders.Insert,
    "U": decoders.Update,
    "D": decoders.Delete,
    "T": decoders.Truncate,
}


def main(dsn, slot, publication, rows):
    rows = int(rows)
    start = time.perf_counter()
    conn = psycopg2.connect(dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cur = conn.cursor()
    cur.start_replication(
        slot_name=slot,
        decode=False,
        options={"proto_version": "1", "publication_names": publication},
    )
    relations = {}
    seen = 0

    class Done(Exception):
        pass

    def consume(msg):
        nonlocal seen
        payload = msg.payload
        decoder = DECODERS.get(chr(payload[0]))
        if decoder is None:
            return
        message = decoder(payload)
        if isinstance(message, decoders.Relation):
            relations[message.relation_id] = [c.name for c in message.columns]
        elif isinstance(message, decoders.Insert):
            names = relations[message.relation_id]
            row = {
                n: c.col_data for n, c in zip(names, message.new_tuple.column_data, strict=False)
            }
            assert row
            seen += 1
        elif isinstance(message, decoders.Commit):
            msg.cursor.send_feedback(flush_lsn=msg.data_start)
            if seen >= rows:
                raise Done

    with contextlib.suppress(Done):
        cur.consume_stream(consume)
    elapsed = time.perf_counter() - start
    conn.close()
    print(f"{elapsed:.6f} {seen}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
