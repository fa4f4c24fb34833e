"""User types that change while a WAL reader runs (``ALTER TYPE ... ADD VALUE / ADD ATTRIBUTE``).

pgoutput announces a user type once per session (a Type message with the
Relation of each table that uses it) and does not announce it again when the
type changes: ``ALTER TYPE`` invalidates no relation of the tables that use the
type.  The reader must notice by itself that its cached type information is
stale and refresh it; the values it delivers must be the ones ``SELECT`` gives
through psycopg with the type registered.  Everything runs against the real
server, in text and binary pgoutput modes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql
from psycopg.adapt import AdaptersMap
from psycopg.types import TypeInfo
from psycopg.types.composite import CompositeInfo, register_composite
from psycopg.types.enum import EnumInfo, register_enum
from wr_helpers import (
    Recorder,
    create_publication,
    drop_slot_when_free,
    execute,
    unique,
)

from otpy import Ref
from otpy.pg import wal_reader
from otpy.pg.connection import TrioConnection
from otpy.pg.replication.options import ReaderOptions
from otpy.pg.replication.pgoutput import Column, Relation, TupleData, Type
from otpy.pg.replication.values import TypeRefreshNeeded, ValueDecoder
from otpy.pg.wal_reader import stream

MODES = ["text", "binary"]
#: A text field that record_out must quote and escape.
TRICKY = """'o,"n\\e (x,y)'"""


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """pgoutput value format of the reader."""
    value: str = request.param
    return value


def selected(dsn: str, query: str, *types: tuple[type[TypeInfo], str]) -> list[tuple[Any, ...]]:
    """Rows of ``query`` on a psycopg connection with ``types`` fetched and registered now."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for cls, name in types:
            info = cls.fetch(conn, name)
            assert info is not None, name
            if isinstance(info, EnumInfo):
                register_enum(info, conn)
            elif isinstance(info, CompositeInfo):
                register_composite(info, conn)
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


def create(dsn: str, *statements: str) -> None:
    """Run set-up statements (blocking)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


async def subscribe(
    dsn: str, rec: Recorder, pub: str, mode: str, slot: str | None = None
) -> tuple[Any, str]:
    """A reader of ``pub`` in ``mode``: on a new temporary slot, or on the persistent ``slot``."""
    options: dict[str, Any] = {"binary": mode == "binary"}
    if slot is None:
        slot = unique("tyslot")
        options["slot_type"] = "temporary"
    else:
        options["slot_type"] = "persistent"
    ref = await wal_reader.subscribe(rec, dsn, slot, [pub], options)
    return ref, slot


def data_of(rec: Recorder, table: str) -> list[dict[str, Any]]:
    return [c.data for c in rec.changes if c.table == table]


# --------------------------------------------------------------------------- reader, live ALTER


async def stream_across_alter(
    dsn: str, mode: str, table: str, setup: list[str], before: str, alter: list[str]
) -> Recorder:
    """Run ``setup``, publish ``table`` and stream ``before`` then ``alter`` (an ALTER + a row).

    Returns the recorder once both changes were handled, the reader stopped:
    the pattern of every test here that decodes rows across a type change.
    """
    create(dsn, *setup)
    create_publication(dsn, f"{table}_pub", [table])
    rec = Recorder()
    ref, _ = await subscribe(dsn, rec, f"{table}_pub", mode)
    try:
        await execute(dsn, before)
        await rec.wait_changes(1)
        await execute(dsn, *alter)
        await rec.wait_changes(2)
    finally:
        await wal_reader.unsubscribe(ref)
    return rec


async def test_a_label_added_to_an_enum_while_the_reader_runs_decodes_as_the_enum(
    module_dsn: str, readers: Ref, mode: str
) -> None:
    kind, table = unique("ty_enum"), unique("ty_enum_t")
    create(
        module_dsn,
        f"CREATE TYPE {kind} AS ENUM ('a', 'b')",
        f"CREATE TABLE {table} (id int PRIMARY KEY, v {kind}, vs {kind}[])",
    )
    create_publication(module_dsn, f"{table}_pub", [table])
    rec = Recorder()
    ref, _ = await subscribe(module_dsn, rec, f"{table}_pub", mode)
    try:
        await execute(module_dsn, f"INSERT INTO {table} VALUES (1, 'a', '{{a,b}}')")
        await rec.wait_changes(1)
        await execute(
            module_dsn,
            f"ALTER TYPE {kind} ADD VALUE 'c'",
            f"INSERT INTO {table} VALUES (2, 'c', '{{c,a}}')",
            f"UPDATE {table} SET v = 'b' WHERE id = 2",
        )
        await rec.wait_changes(3)
    finally:
        await wal_reader.unsubscribe(ref)
    rows = selected(module_dsn, f"SELECT id, v, vs FROM {table} ORDER BY id", (EnumInfo, kind))
    (_, _, _), (_, b, ca) = rows
    c = ca[0]
    got = data_of(rec, table)
    # The first row was decoded before the ALTER, with the Python enum of labels (a, b).
    assert (got[0]["v"].name, [m.name for m in got[0]["vs"]]) == ("a", ["a", "b"])
    assert got[1:] == [{"id": 2, "v": c, "vs": ca}, {"id": 2, "v": b, "vs": ca}]
    assert type(got[1]["v"]) is type(c)


async def test_an_attribute_added_to_a_composite_while_the_reader_runs_decodes_as_the_composite(
    module_dsn: str, readers: Ref, mode: str
) -> None:
    kind, table = unique("ty_comp"), unique("ty_comp_t")
    create(
        module_dsn,
        f"CREATE TYPE {kind} AS (x int, label text)",
        f"CREATE TABLE {table} (id int PRIMARY KEY, v {kind}, vs {kind}[])",
    )
    create_publication(module_dsn, f"{table}_pub", [table])
    rec = Recorder()
    ref, _ = await subscribe(module_dsn, rec, f"{table}_pub", mode)
    try:
        await execute(
            module_dsn,
            f"INSERT INTO {table} VALUES (1, ROW(1, 'one'), ARRAY[ROW(1, 'one')::{kind}])",
        )
        await rec.wait_changes(1)
        await execute(
            module_dsn,
            f"ALTER TYPE {kind} ADD ATTRIBUTE at date",
            f"INSERT INTO {table} VALUES "
            f"(2, ROW(2, 'two', '2024-01-02'), ARRAY[ROW(2, 'two', '2024-01-02')::{kind}])",
        )
        await rec.wait_changes(2)
    finally:
        await wal_reader.unsubscribe(ref)
    rows = selected(module_dsn, f"SELECT id, v, vs FROM {table} ORDER BY id", (CompositeInfo, kind))
    got = data_of(rec, table)
    assert got[1] == {"id": 2, "v": rows[1][1], "vs": rows[1][2]}
    assert got[1]["v"].at == rows[1][1].at  # a namedtuple with the new field, not text
    assert type(got[1]["v"]) is type(rows[1][1])


async def test_a_domain_over_an_enum_that_gained_a_label_decodes_as_the_enum(
    module_dsn: str, readers: Ref, mode: str
) -> None:
    kind, dom, table = unique("ty_denum"), unique("ty_dom"), unique("ty_dom_t")
    rec = await stream_across_alter(
        module_dsn,
        mode,
        table,
        [
            f"CREATE TYPE {kind} AS ENUM ('a')",
            f"CREATE DOMAIN {dom} AS {kind}",
            f"CREATE TABLE {table} (id int PRIMARY KEY, v {dom})",
        ],
        f"INSERT INTO {table} VALUES (1, 'a')",
        [
            f"ALTER TYPE {kind} ADD VALUE 'z'",
            f"INSERT INTO {table} VALUES (2, 'z')",
        ],
    )
    rows = selected(module_dsn, f"SELECT id, v FROM {table} ORDER BY id", (EnumInfo, kind))
    got = data_of(rec, table)
    assert got[0]["v"].name == "a"  # decoded before the ALTER, with the enum of labels (a)
    assert got[1] == {"id": 2, "v": rows[1][1]}
    assert got[1]["v"].name == "z"


async def test_a_composite_whose_enum_field_gained_a_label_decodes_as_select_gives_it(
    module_dsn: str, readers: Ref, mode: str
) -> None:
    kind, comp, table = unique("ty_fe"), unique("ty_fc"), unique("ty_fc_t")
    rec = await stream_across_alter(
        module_dsn,
        mode,
        table,
        [
            f"CREATE TYPE {kind} AS ENUM ('a')",
            f"CREATE TYPE {comp} AS (x int, e {kind})",
            f"CREATE TABLE {table} (id int PRIMARY KEY, v {comp})",
        ],
        f"INSERT INTO {table} VALUES (1, ROW(1, 'a'))",
        [
            f"ALTER TYPE {kind} ADD VALUE 'new'",
            f"INSERT INTO {table} VALUES (2, ROW(2, 'new'))",
        ],
    )
    rows = selected(
        module_dsn,
        f"SELECT id, v FROM {table} ORDER BY id",
        (EnumInfo, kind),
        (CompositeInfo, comp),
    )
    got = data_of(rec, table)
    assert got[0]["v"].e.name == "a"  # the field is the enum too, not its text
    assert got[1] == {"id": 2, "v": rows[1][1]}
    assert got[1]["v"].e.name == "new"


async def test_an_attribute_dropped_from_a_composite_while_the_reader_runs_is_gone_from_new_rows(
    module_dsn: str, readers: Ref, mode: str
) -> None:
    comp, table = unique("ty_drop"), unique("ty_drop_t")
    rec = await stream_across_alter(
        module_dsn,
        mode,
        table,
        [
            f"CREATE TYPE {comp} AS (x int, gone text, y int)",
            f"CREATE TABLE {table} (id int PRIMARY KEY, v {comp})",
        ],
        f"INSERT INTO {table} VALUES (1, ROW(1, 'g', 2))",
        [
            f"ALTER TYPE {comp} DROP ATTRIBUTE gone",
            f"INSERT INTO {table} VALUES (2, ROW(3, 4))",
        ],
    )
    rows = selected(module_dsn, f"SELECT id, v FROM {table} ORDER BY id", (CompositeInfo, comp))
    got = data_of(rec, table)
    assert got[0]["v"] == (1, "g", 2)
    assert got[1] == {"id": 2, "v": rows[1][1]}
    assert got[1]["v"]._fields == ("x", "y")


async def test_a_domain_over_a_composite_that_gained_an_attribute_decodes_as_the_composite(
    module_dsn: str, readers: Ref, mode: str
) -> None:
    comp, dom, table = unique("ty_dcomp"), unique("ty_dcdom"), unique("ty_dcomp_t")
    rec = await stream_across_alter(
        module_dsn,
        mode,
        table,
        [
            f"CREATE TYPE {comp} AS (x int)",
            f"CREATE DOMAIN {dom} AS {comp}",
            f"CREATE TABLE {table} (id int PRIMARY KEY, v {dom}, vs {dom}[])",
        ],
        f"INSERT INTO {table} VALUES (1, ROW(1), ARRAY[ROW(1)::{dom}])",
        [
            f"ALTER TYPE {comp} ADD ATTRIBUTE y text",
            f"INSERT INTO {table} VALUES (2, ROW(2, 'b'), ARRAY[ROW(2, 'b')::{dom}])",
        ],
    )
    rows = selected(module_dsn, f"SELECT id, v, vs FROM {table} ORDER BY id", (CompositeInfo, comp))
    got = data_of(rec, table)
    assert got[0]["v"].x == 1
    # psycopg reads a domain's value as its base type's, but not an array of the
    # domain (its own type OID): the reader gives the list SELECT would if it could.
    assert got[1] == {"id": 2, "v": rows[1][1], "vs": [rows[1][1]]}
    assert got[1]["v"].y == "b"


# --------------------------------------------------------------------------- rows written before


async def test_rows_written_before_an_alter_and_decoded_after_it_come_out_as_select_gives_them(
    module_dsn: str, readers: Ref, mode: str
) -> None:
    """The reader starts after the ALTERs: it fetches today's types for yesterday's rows."""
    kind, comp, table = unique("ty_old_e"), unique("ty_old_c"), unique("ty_old_t")
    create(
        module_dsn,
        f"CREATE TYPE {kind} AS ENUM ('a')",
        f"CREATE TYPE {comp} AS (x int, label text)",
        f"CREATE TABLE {table} (id int PRIMARY KEY, e {kind}, c {comp}, cs {comp}[])",
    )
    create_publication(module_dsn, f"{table}_pub", [table])
    slot = unique("ty_old_slot")
    create(module_dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    create(
        module_dsn,
        # quotes, a comma, a backslash and parentheses: the field count must not be fooled
        f"INSERT INTO {table} VALUES (1, 'a', ROW(1, {TRICKY}), ARRAY[ROW(1, {TRICKY})::{comp}])",
        f"ALTER TYPE {kind} ADD VALUE 'b'",
        f"ALTER TYPE {comp} ADD ATTRIBUTE n numeric",
        f"INSERT INTO {table} VALUES "
        f"(2, 'b', ROW(2, 'two', 2.5), ARRAY[ROW(2, 'two', 2.5)::{comp}])",
    )
    rec = Recorder()
    ref, _ = await subscribe(module_dsn, rec, f"{table}_pub", mode, slot)
    try:
        await rec.wait_changes(2)
    finally:
        await wal_reader.unsubscribe(ref)
        await drop_slot_when_free(module_dsn, slot)
    rows = selected(
        module_dsn,
        f"SELECT id, e, c, cs FROM {table} ORDER BY id",
        (EnumInfo, kind),
        (CompositeInfo, comp),
    )
    assert rows[0][2].n is None  # what SELECT gives for the old row: the new attribute is NULL
    assert data_of(rec, table) == [{"id": i, "e": e, "c": c, "cs": cs} for i, e, c, cs in rows]


async def test_a_composite_value_built_before_an_add_attribute_and_committed_after_it_gets_nulls(
    module_dsn: str, readers: Ref, mode: str
) -> None:
    """The reader refreshed for the new shape, then meets an old-shape record: NULL, not text."""
    comp, table = unique("ty_late"), unique("ty_late_t")
    create(
        module_dsn,
        f"CREATE TYPE {comp} AS (x int)",
        f"CREATE TABLE {table} (id int PRIMARY KEY, v {comp})",
    )
    create_publication(module_dsn, f"{table}_pub", [table])
    rec = Recorder()
    ref, _ = await subscribe(module_dsn, rec, f"{table}_pub", mode)
    try:
        async with await TrioConnection.connect(module_dsn) as late:
            await late.execute(f"INSERT INTO {table} VALUES (1, ROW(1))")  # type: ignore[arg-type]
            await execute(
                module_dsn,
                f"ALTER TYPE {comp} ADD ATTRIBUTE y int",
                f"INSERT INTO {table} VALUES (2, ROW(2, 3))",
            )
            await rec.wait_changes(1)
            await late.commit()
        await rec.wait_changes(2)
    finally:
        await wal_reader.unsubscribe(ref)
    rows = selected(module_dsn, f"SELECT id, v FROM {table} ORDER BY id", (CompositeInfo, comp))
    got = {row["id"]: row for row in data_of(rec, table)}
    assert [got[2], got[1]] == [{"id": i, "v": v} for i, v in reversed(rows)]
    assert got[1]["v"].y is None


async def test_a_renamed_attribute_is_picked_up_when_pgoutput_sends_the_table_again(
    module_dsn: str, readers: Ref, mode: str
) -> None:
    """No value is refused after RENAME ATTRIBUTE; a re-sent Relation (ALTER TABLE) refreshes."""
    comp, table = unique("ty_ren_at"), unique("ty_ren_at_t")
    rec = await stream_across_alter(
        module_dsn,
        mode,
        table,
        [
            f"CREATE TYPE {comp} AS (x int, old_name text)",
            f"CREATE TABLE {table} (id int PRIMARY KEY, v {comp})",
        ],
        f"INSERT INTO {table} VALUES (1, ROW(1, 'a'))",
        [
            f"ALTER TYPE {comp} RENAME ATTRIBUTE old_name TO new_name",
            f"ALTER TABLE {table} ADD COLUMN note text",
            f"INSERT INTO {table} VALUES (2, ROW(2, 'b'), 'n')",
        ],
    )
    rows = selected(
        module_dsn, f"SELECT id, v, note FROM {table} ORDER BY id", (CompositeInfo, comp)
    )
    got = data_of(rec, table)
    assert got[1] == {"id": 2, "v": rows[1][1], "note": "n"}
    assert got[1]["v"].new_name == "b"


async def test_a_label_added_just_after_pgoutput_sent_the_table_again_decodes_as_the_enum(
    module_dsn: str, readers: Ref, mode: str
) -> None:
    """A migration: ALTER TABLE (pgoutput re-sends the table and its types), then ALTER TYPE."""
    kind, table = unique("ty_mig"), unique("ty_mig_t")
    create(
        module_dsn,
        f"CREATE TYPE {kind} AS ENUM ('a')",
        f"CREATE TABLE {table} (id int PRIMARY KEY, v {kind})",
    )
    create_publication(module_dsn, f"{table}_pub", [table])
    rec = Recorder()
    ref, _ = await subscribe(module_dsn, rec, f"{table}_pub", mode)
    try:
        await execute(module_dsn, f"INSERT INTO {table} VALUES (1, 'a')")
        await rec.wait_changes(1)
        await execute(
            module_dsn,
            f"ALTER TABLE {table} ADD COLUMN note text",
            f"INSERT INTO {table} VALUES (2, 'a', 'x')",
        )
        await rec.wait_changes(2)
        await execute(
            module_dsn,
            f"ALTER TYPE {kind} ADD VALUE 'b'",
            f"INSERT INTO {table} VALUES (3, 'b', 'y')",
        )
        await rec.wait_changes(3)
    finally:
        await wal_reader.unsubscribe(ref)
    rows = selected(module_dsn, f"SELECT id, v, note FROM {table} ORDER BY id", (EnumInfo, kind))
    assert data_of(rec, table)[2] == {"id": 3, "v": rows[2][1], "note": "y"}


async def test_a_type_fetch_that_hangs_gives_up_after_the_timeout_and_the_connection_survives(
    module_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kind = unique("ty_hang")
    create(module_dsn, f"CREATE TYPE {kind} AS ENUM ('a')")
    with psycopg.connect(module_dsn) as conn:
        info = EnumInfo.fetch(conn, kind)
    assert info is not None
    monkeypatch.setattr(stream, "TYPE_FETCH_TIMEOUT", 0.3)
    session = stream.ReplicationSession({}, "unused", (), ReaderOptions())
    decoder = ValueDecoder()
    decoder.add_type(Type(None, info.oid, "public", kind))
    assert decoder.missing_types() == frozenset({info.oid})
    async with (
        await TrioConnection.connect(module_dsn, autocommit=True) as meta,
        await TrioConnection.connect(module_dsn) as locker,
    ):
        session.meta = meta
        await locker.execute("LOCK TABLE pg_catalog.pg_namespace IN ACCESS EXCLUSIVE MODE")
        with trio.fail_after(5):
            await session._fetch_types(decoder)
        await locker.rollback()
        assert decoder.missing_types() == frozenset()  # given up: its values stay text
        assert any("cannot fetch user types" in r.getMessage() for r in caplog.records)
        cur = await meta.execute("SELECT 1")
        assert await cur.fetchall() == [(1,)]
    session.meta = None


async def test_a_record_written_before_a_drop_attribute_and_decoded_after_it_is_delivered_raw(
    module_dsn: str, readers: Ref, mode: str
) -> None:
    """Documented (docs/types.md): today's catalog has fewer fields than the old record."""
    comp, table = unique("ty_olddrop"), unique("ty_olddrop_t")
    create(
        module_dsn,
        f"CREATE TYPE {comp} AS (x int, gone text)",
        f"CREATE TABLE {table} (id int PRIMARY KEY, v {comp})",
    )
    create_publication(module_dsn, f"{table}_pub", [table])
    slot = unique("ty_olddrop_slot")
    create(module_dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    create(
        module_dsn,
        f"INSERT INTO {table} VALUES (1, ROW(1, 'g'))",
        f"ALTER TYPE {comp} DROP ATTRIBUTE gone",
        f"INSERT INTO {table} VALUES (2, ROW(2))",
    )
    rec = Recorder()
    ref, _ = await subscribe(module_dsn, rec, f"{table}_pub", mode, slot)
    try:
        await rec.wait_changes(2)
    finally:
        await wal_reader.unsubscribe(ref)
        await drop_slot_when_free(module_dsn, slot)
    got = data_of(rec, table)
    if mode == "text":
        assert got[0]["v"] == "(1,g)"
    else:  # the binary record: 2 fields
        assert isinstance(got[0]["v"], bytes) and got[0]["v"][:4] == b"\0\0\0\2"
    assert got[1]["v"] == (2,) and got[1]["v"]._fields == ("x",)


async def test_a_value_the_current_catalog_cannot_load_is_delivered_as_text_without_a_loop(
    module_dsn: str, readers: Ref, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A label renamed after the row was written: the row keeps its old label, as text."""
    kind, table = unique("ty_ren"), unique("ty_ren_t")
    create(
        module_dsn,
        f"CREATE TYPE {kind} AS ENUM ('a', 'b')",
        f"CREATE TABLE {table} (id int PRIMARY KEY, v {kind})",
    )
    create_publication(module_dsn, f"{table}_pub", [table])
    slot = unique("ty_ren_slot")
    create(module_dsn, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    create(
        module_dsn,
        f"INSERT INTO {table} VALUES (1, 'a')",
        f"INSERT INTO {table} VALUES (2, 'a')",
        f"ALTER TYPE {kind} RENAME VALUE 'a' TO 'a2'",
        f"INSERT INTO {table} VALUES (3, 'b')",
    )
    rec = Recorder()
    caplog.set_level(logging.WARNING, logger="otpy")
    ref, _ = await subscribe(module_dsn, rec, f"{table}_pub", mode, slot)
    try:
        await rec.wait_changes(3)
    finally:
        await wal_reader.unsubscribe(ref)
        await drop_slot_when_free(module_dsn, slot)
    old = "a" if mode == "text" else b"a"
    got = data_of(rec, table)
    assert [row["v"] for row in got[:2]] == [old, old]
    assert got[2]["v"].name == "b"
    assert sum("cannot load a value" in r.getMessage() for r in caplog.records) == 1


# --------------------------------------------------------------------------- the decoder alone


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def enum_decoder(module_dsn: str) -> Iterator[tuple[ValueDecoder, _Clock, int]]:
    """A refreshing decoder with a 2-label enum registered, and the relation (id 1) using it."""
    kind = unique("ty_unit")
    create(module_dsn, f"CREATE TYPE {kind} AS ENUM ('a', 'b')")
    with psycopg.connect(module_dsn) as conn:
        info = EnumInfo.fetch(conn, kind)
    assert info is not None
    clock = _Clock()
    decoder = ValueDecoder(AdaptersMap(psycopg.postgres.adapters), clock=clock)
    decoder.refresh_on_failure = True
    decoder.register_type(info)
    decoder.add_relation(Relation(None, 1, "public", "t", "d", (Column(0, "v", info.oid, -1),)))
    yield decoder, clock, info.oid


def _text_row(value: bytes) -> TupleData:
    return TupleData(b"t", (value,))


def test_a_value_a_user_type_refuses_asks_for_a_refresh_once_per_catalog_state(
    enum_decoder: tuple[ValueDecoder, _Clock, int],
) -> None:
    decoder, clock, oid = enum_decoder
    assert decoder.decode(1, _text_row(b"a"))["v"].name == "a"
    with pytest.raises(TypeRefreshNeeded) as raised:
        decoder.decode(1, _text_row(b"zz"))
    assert raised.value.oids == frozenset({oid})
    assert decoder.stale_types() == frozenset({oid})
    # The refresh found nothing new: the value is delivered as text, and asking
    # again for every such row is not allowed until the back-off has passed.
    decoder.refreshed(decoder.stale_types())
    assert decoder.decode(1, _text_row(b"zz")) == {"v": "zz"}
    clock.now += ValueDecoder.REFRESH_BACKOFF / 2
    assert decoder.decode(1, _text_row(b"zz")) == {"v": "zz"}
    clock.now += ValueDecoder.REFRESH_BACKOFF
    with pytest.raises(TypeRefreshNeeded):
        decoder.decode(1, _text_row(b"zz"))


def test_a_type_announced_again_is_refreshed_without_backing_off(
    enum_decoder: tuple[ValueDecoder, _Clock, int],
) -> None:
    decoder, _, oid = enum_decoder
    decoder.add_type(Type(None, oid, "public", "e"))
    assert decoder.stale_types() == frozenset({oid})
    decoder.refreshed(decoder.stale_types())  # nothing had changed
    with pytest.raises(TypeRefreshNeeded):
        decoder.decode(1, _text_row(b"zz"))


def test_a_decoder_that_does_not_refresh_delivers_refused_values_as_text(
    enum_decoder: tuple[ValueDecoder, _Clock, int],
) -> None:
    decoder, _, _ = enum_decoder
    decoder.refresh_on_failure = False
    assert decoder.decode(1, _text_row(b"zz")) == {"v": "zz"}


def test_fetching_refreshes_a_stale_type_from_the_catalog(module_dsn: str) -> None:
    from otpy.pg.wal_reader.typefetch import fetch_missing_types

    kind = unique("ty_fetch")
    create(module_dsn, f"CREATE TYPE {kind} AS ENUM ('a')")
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        info = EnumInfo.fetch(conn, kind)
        assert info is not None
        decoder = ValueDecoder(conn)
        decoder.refresh_on_failure = True
        decoder.register_type(info)
        decoder.add_relation(Relation(None, 1, "public", "t", "d", (Column(0, "v", info.oid, -1),)))
        conn.execute(sql.SQL("ALTER TYPE {} ADD VALUE 'new'").format(sql.Identifier(kind)))
        with pytest.raises(TypeRefreshNeeded):
            decoder.decode(1, _text_row(b"new"))
        fetch_missing_types(conn, decoder)
        assert decoder.stale_types() == frozenset()
        assert decoder.decode(1, _text_row(b"new"))["v"].name == "new"
