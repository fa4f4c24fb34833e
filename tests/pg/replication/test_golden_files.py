"""Offline golden tests: stored real pgoutput streams decode to the stored output.

The files in ``data/`` were captured by ``make_golden_data.py``: from
PostgreSQL 15, protocol 1 text; protocol 2 binary with streaming and messages;
protocol 3 with streaming and two-phase; from PostgreSQL 18, protocol 4 binary
with parallel streaming and two-phase (the long Stream Abort).  No server is needed, so a
change in decoding shows up here even where PostgreSQL is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from otpy.pg.replication import (
    JSON_NULL,
    Insert,
    PgOutputDecoder,
    Relation,
    StreamAbort,
    Type,
    ValueDecoder,
    encode_message,
)
from otpy.pg.replication.pgoutput import PgOutputMessage

DATA = Path(__file__).resolve().parent / "data"
STREAMS = sorted(path.stem for path in DATA.glob("*.hex"))

EVERY_KIND = {
    "Begin", "Commit", "Origin", "Relation", "Type", "Insert", "Update", "Delete", "Truncate",
    "Message", "StreamStart", "StreamStop", "StreamCommit", "StreamAbort", "BeginPrepare",
    "Prepare", "CommitPrepared", "RollbackPrepared", "StreamPrepare",
}  # fmt: skip


def load(name: str) -> tuple[list[bytes], list[str]]:
    raw = [bytes.fromhex(line) for line in (DATA / f"{name}.hex").read_text().splitlines()]
    expected = (DATA / f"{name}.expected").read_text().splitlines()
    assert len(raw) == len(expected)
    return raw, expected


def test_streams_are_present() -> None:
    assert STREAMS == [
        "v1_text",
        "v2_binary_stream_messages",
        "v3_text_stream_two_phase",
        "v4_binary_parallel_stream",
    ]


@pytest.mark.parametrize("name", STREAMS)
def test_stream_decodes_to_golden_output(name: str) -> None:
    raw, expected = load(name)
    decoder = PgOutputDecoder()
    messages: list[PgOutputMessage] = []
    for data, want in zip(raw, expected, strict=True):
        message = decoder.decode(data)
        assert repr(message) == want
        assert encode_message(message) == data
        messages.append(message)
    kinds = {type(m).__name__ for m in messages}
    if name.startswith("v3"):
        assert kinds == EVERY_KIND
    aborts = [m for m in messages if isinstance(m, StreamAbort)]
    if name.startswith("v4"):
        # PostgreSQL 18 streams every kind, but the aborted savepoint's Stream Abort
        # is the long one (abort LSN and time), as parallel streaming asks.
        assert kinds == EVERY_KIND
        assert aborts and all(a.abort_lsn is not None and a.abort_time for a in aborts)
    else:
        assert all(a.abort_lsn is None and a.abort_time is None for a in aborts)
    # The stored rows decode into values without a server (user types as text).
    values = ValueDecoder()
    rows = []
    for message in messages:
        if isinstance(message, Relation):
            values.add_relation(message)
        elif isinstance(message, Type):
            values.add_type(message)
        elif isinstance(message, Insert):
            rows.append(values.decode(message.relation_oid, message.new))
    first = rows[0]
    assert first["id"] == 1 and first["t"] == "a" and first["j"] is JSON_NULL
    assert first["f"] != first["f"]  # NaN
    assert (first["m"] == "happy") if "binary" not in name else (first["m"] == b"happy")
    assert len(first["big"]) == 10240
