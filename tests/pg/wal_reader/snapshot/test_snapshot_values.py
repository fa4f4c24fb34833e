"""Property: a snapshot row and a backfilled row are the streamed row, value for value.

A seeded random loop (each seed one example, reproducible from the test id)
writes rows of a table with a column of nearly every built-in type (and an
enum, a composite, a domain, a range) holding edge values: NULLs, infinities,
NaN, -0.0, empty and odd strings (tabs, newlines, backslashes, quotes,
non-ASCII), empty and nested arrays, JSON null.  The rows are read by an
initial snapshot, written again (with other keys) to be streamed, and read a
third time by a backfill; every column of every row must have the same
``repr`` and type in the three (``repr``: NaN is not equal to itself), in the
text and the binary stream format, and after a round trip through the dead
letters' JSON (what a parked transaction keeps).
"""

from __future__ import annotations

import json
import random

import pytest
from test_snapshot import streaming
from wr_helpers import Recorder, execute, published_table, unique

from otpy import Ref
from otpy.pg import wal_reader
from otpy.pg.wal_reader import dead_letters
from otpy.pg.wal_reader.snapshot import is_backfill_batch, is_snapshot_batch

ROWS = 12
STRINGS = [
    "",
    "plain",
    "tab\there",
    "new\nline",
    "back\\slash",
    "cr\rlf",
    "quote'\"",
    "é✓😀",
    "\\N",
]


def columns(enum: str, composite: str, domain: str) -> dict[str, tuple[str, list[str | None]]]:
    """Column name -> (type, candidate values as SQL text, None for NULL)."""
    texts = [s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n") for s in STRINGS]
    return {
        "i2": ("int2", ["0", "-32768", "32767"]),
        "i8": ("int8", ["0", "-9223372036854775808", "9223372036854775807"]),
        "num": ("numeric", ["0", "-0.000001", "123456789012345678901234567890.5", "NaN"]),
        "num2": ("numeric(5, 2)", ["1.5", "-999.99"]),
        "f4": ("float4", ["0", "-0", "NaN", "Infinity", "1.17549e-38"]),
        "f8": ("float8", ["-0", "NaN", "-Infinity", "1e308", "0.1"]),
        "t": ("text", texts),
        "vc": ("varchar(12)", ["", "short"]),
        "ch": ("char(3)", ["a", "abc"]),
        "qc": ('"char"', ["x", ""]),
        "nm": ("name", ["a_name"]),
        "ba": ("bytea", ["\\x", "\\x00ff5c0a", "\\x5c4e"]),
        "b": ("bool", ["t", "f"]),
        "d": ("date", ["2024-02-29", "infinity", "-infinity", "0001-01-01"]),
        "ts": ("timestamp", ["2024-01-01 00:00:00.000001", "infinity", "-infinity"]),
        "tz": ("timestamptz", ["2024-06-30 23:59:59.999999+05:30", "infinity", "-infinity"]),
        "tm": ("time", ["00:00", "23:59:59.999999"]),
        "ttz": ("timetz", ["12:00+02", "00:00:01-11:30"]),
        "iv": ("interval", ["0", "1 year 2 mons 3 days 04:05:06.7", "-1 day"]),
        "u": (
            "uuid",
            ["00000000-0000-0000-0000-000000000000", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
        ),
        "j": ("json", ["null", '{"a": [1, null, "x\\\\y"]}', '"s"', "[]", "1e400"]),
        "jb": ("jsonb", ["null", '{"k": {"n": [true, false, null]}}', '""', "-0.5"]),
        "ip": ("inet", ["10.0.0.1", "10.0.0.1/8", "::1", "fe80::1/64"]),
        "cidr": ("cidr", ["10.0.0.0/8", "::/0"]),
        "mac": ("macaddr", ["08:00:2b:01:02:03"]),
        "ia": ("int4[]", ["{}", "{1,NULL,3}", "{{1,2},{3,4}}"]),
        "ta": ("text[]", ["{}", '{"",NULL,"a,b","q\\"x"}']),
        "money": ("money", ["0", "-12.34", "1234567.89"]),
        "pt": ("point", ["(0,0)", "(-1.5,2e10)"]),
        "bit": ("bit(4)", ["0000", "1010"]),
        "vb": ("varbit", ["", "1"]),
        "tsv": ("tsvector", ["", "a:1 b:2"]),
        "lsn": ("pg_lsn", ["0/0", "FFFFFFFF/FFFFFFFF"]),
        "oid": ("oid", ["0", "4294967295"]),
        "e": (enum, ["sad", "happy"]),
        "comp": (composite, ["(1,x)", "(,)", '(2,"a,b")']),
        "dom": (domain, ["1", "2147483647"]),
        "rng": ("int4range", ["empty", "[1,5)", "(,3]"]),
    }


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("seed", range(3))
async def test_a_read_row_is_the_streamed_row_whatever_the_values(
    module_dsn: str, readers: Ref, seed: int, binary: bool
) -> None:
    rng = random.Random(7000 + seed)
    enum, composite, domain = unique("vals_mood"), unique("vals_pair"), unique("vals_pos")
    await execute(
        module_dsn,
        f"CREATE TYPE {enum} AS ENUM ('sad', 'happy')",
        f"CREATE TYPE {composite} AS (n int, s text)",
        f"CREATE DOMAIN {domain} AS int CHECK (VALUE > 0)",
    )
    spec = columns(enum, composite, domain)
    table = unique("vals")
    pub = published_table(
        module_dsn,
        table,
        "id int PRIMARY KEY, " + ", ".join(f"{name} {kind}" for name, (kind, _) in spec.items()),
    )
    rows: list[list[str | None]] = [
        [None if rng.random() < 0.15 else rng.choice(values) for _, values in spec.values()]
        for _ in range(ROWS)
    ]
    names = ", ".join(spec)
    casts = ", ".join(f"%s::{kind}" for kind, _ in spec.values())

    async def insert(offset: int) -> None:
        for i, row in enumerate(rows):
            await execute(
                module_dsn,
                f"INSERT INTO {table} (id, {names}) VALUES (%s, {casts})",
                params=[offset + i, *row],
            )

    await insert(0)
    rec = Recorder()
    async with streaming(
        rec, module_dsn, pub, snapshot="initial", messages=True, binary=binary
    ) as sub:
        reads = {c.data["id"]: c.data for b in rec.batches if is_snapshot_batch(b) for c in b}
        await insert(1000)
        streamed = {
            c.data["id"] - 1000: c.data
            for c in await rec.wait_changes(2 * ROWS)
            if c.op == "insert"
        }
        assert await wal_reader.backfill(sub, [table], where="id < 1000", chunk_size=5) == ROWS
        backfilled = {c.data["id"]: c.data for b in rec.batches if is_backfill_batch(b) for c in b}
    assert sorted(reads) == sorted(streamed) == sorted(backfilled) == list(range(ROWS))
    for i in range(ROWS):
        for name in spec:
            expected = streamed[i][name]
            # A parked transaction keeps it too (the dead letters' JSON).
            parked = dead_letters.decode_value(
                json.loads(json.dumps(dead_letters.encode_value(expected)))
            )
            assert (type(parked).__name__, repr(parked)) == (
                type(expected).__name__,
                repr(expected),
            ), f"column {name}: parked {parked!r}, streamed {expected!r}"
            for source, got in (("snapshot", reads[i][name]), ("backfill", backfilled[i][name])):
                assert (type(got), repr(got)) == (type(expected), repr(expected)), (
                    f"row {i} column {name} ({spec[name][0]} {rows[i][list(spec).index(name)]!r}):"
                    f" {source} gave {got!r}, the stream {expected!r}"
                )
