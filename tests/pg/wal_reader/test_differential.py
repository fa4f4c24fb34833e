"""Differential test: every change otpy delivers vs what ``test_decoding`` reports.

Both slots see the same randomized workload (inserts, updates with and without
key changes, deletes, truncates, multi-statement transactions, two replica
identities).  test_decoding's text output is parsed and both sides are
normalized to (xid, table, op, new columns, old columns) with SQL text values.
"""

from __future__ import annotations

import decimal
import random
import re
from typing import Any

import psycopg
import pytest
from wr_helpers import Recorder, create_publication, execute, unique

from otpy import Ref
from otpy.pg import wal_reader

_LINE = re.compile(r"^table (\w+)\.(\w+): (INSERT|UPDATE|DELETE|TRUNCATE): ?(.*)$")
_COLUMN = re.compile(r"(\w+)\[[^\]]+\]:('(?:[^']|'')*'|\S+)")


@pytest.fixture(scope="module")
def diff_tables(module_dsn: str) -> str:
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE da (id int PRIMARY KEY, name text, flag bool, n numeric)")
        conn.execute("CREATE TABLE db (id int PRIMARY KEY, name text, flag bool, n numeric)")
        conn.execute("ALTER TABLE db REPLICA IDENTITY FULL")
    create_publication(module_dsn, "diff_pub", ["da", "db"])
    return "diff_pub"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def _columns(text: str) -> dict[str, str]:
    out = {}
    for name, raw in _COLUMN.findall(text):
        if raw == "null":
            continue
        out[name] = raw[1:-1].replace("''", "'") if raw.startswith("'") else raw
    return out


def parse_test_decoding(rows: list[tuple[str, int, str]]) -> list[tuple[Any, ...]]:
    """(xid, table, op, new, old) per change, from test_decoding's lines."""
    out: list[tuple[Any, ...]] = []
    for _lsn, xid, data in rows:
        match = _LINE.match(data)
        if match is None:
            assert data.startswith(("BEGIN", "COMMIT")), data
            continue
        _schema, table, op, rest = match.groups()
        op = op.lower()
        if op == "truncate":
            out.append((xid, table, op, None, None))
        elif op == "update" and rest.startswith("old-key:"):
            old, new = rest[len("old-key: ") :].split(" new-tuple: ")
            out.append((xid, table, op, _columns(new), _columns(old)))
        else:
            out.append((xid, table, op, _columns(rest), None))
    return out


def normalize_otpy(batches: list[Any]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for batch in batches:
        for c in batch:
            new = None if c.data is None else {k: _text(v) for k, v in c.data.items()}
            old = None if c.old is None else {k: _text(v) for k, v in c.old.items()}
            # test_decoding leaves nulls out: compare on the non-null columns.
            new = None if new is None else {k: v for k, v in new.items() if v is not None}
            old = None if old is None else {k: v for k, v in old.items() if v is not None}
            out.append((c.xid, c.table, c.op, new, old))
    return out


def workload(rng: random.Random) -> list[str]:
    statements: list[str] = []
    live: dict[str, set[int]] = {"da": set(), "db": set()}
    next_id = 1
    for _ in range(150):
        parts = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            table = rng.choice(["da", "db"])
            ids = live[table]
            kind = rng.random()
            if kind < 0.45 or not ids:
                name = rng.choice(["ann", "o'neil", "x y", "", "ünï"])
                flag = rng.choice(["true", "false", "NULL"])
                n = rng.choice(["1.50", "-3", "NULL", "12345678901234567890.123"])
                quoted = name.replace("'", "''")
                parts.append(f"INSERT INTO {table} VALUES ({next_id}, '{quoted}', {flag}, {n})")
                ids.add(next_id)
                next_id += 1
            elif kind < 0.7:
                row = rng.choice(sorted(ids))
                parts.append(f"UPDATE {table} SET name = 'u{row}', n = n + 1 WHERE id = {row}")
            elif kind < 0.8:
                row = rng.choice(sorted(ids))
                parts.append(f"UPDATE {table} SET id = {next_id} WHERE id = {row}")
                ids.discard(row)
                ids.add(next_id)
                next_id += 1
            elif kind < 0.98:
                row = rng.choice(sorted(ids))
                parts.append(f"DELETE FROM {table} WHERE id = {row}")
                ids.discard(row)
            else:
                parts.append(f"TRUNCATE {table}")
                ids.clear()
        statements.append("BEGIN; " + "; ".join(parts) + "; COMMIT")
    return statements


@pytest.mark.requires("test_decoding")
async def test_otpy_matches_test_decoding(module_dsn: str, diff_tables: str, readers: Ref) -> None:
    td_slot = unique("td")
    await execute(
        module_dsn, f"SELECT pg_create_logical_replication_slot('{td_slot}', 'test_decoding')"
    )
    rec = Recorder()
    ref = await wal_reader.subscribe(rec, module_dsn, unique("diff"), [diff_tables])
    try:
        statements = workload(random.Random(3))
        await execute(module_dsn, *statements)
        await rec.wait_for(lambda: sum(b.final for b in rec.batches) >= len(statements), 60)
    finally:
        await wal_reader.unsubscribe(ref)
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # the SQL interface decodes flushed WAL only
        rows = conn.execute(
            "SELECT lsn::text, xid::text::bigint, data FROM pg_logical_slot_get_changes("
            "%s, NULL, NULL, 'include-xids', '1', 'skip-empty-xacts', '1')",
            [td_slot],
        ).fetchall()
        conn.execute("SELECT pg_drop_replication_slot(%s)", [td_slot])
    expected = parse_test_decoding(rows)
    got = normalize_otpy(rec.batches)
    assert len(got) == len(expected) > 150
    for i, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        assert mine == theirs, f"change #{i} differs"
