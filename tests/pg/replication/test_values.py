"""Value decoding: every built-in type through real pgoutput bytes, text and binary.

One wide table gets one column per case; a row with the literals and a row of
NULLs are captured with protocol 1 (text) and protocol 1 + ``binary``, decoded
by :class:`ValueDecoder`, and compared with the expected Python values.  The
same cases generate the PostgreSQL -> Python table in ``docs/types.md``: the
test fails when the document and the real behaviour differ (run with
``OTPY_UPDATE_DOCS=1`` to rewrite it).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any
from uuid import UUID

import attrs
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pgcapture import Capture, execute
from psycopg.types.multirange import Multirange
from psycopg.types.range import Range

from otpy.pg.replication import (
    JSON_NULL,
    LSN,
    UNCHANGED_TOAST,
    Insert,
    PgOutputDecoder,
    Relation,
    RelationMismatchError,
    TupleData,
    Type,
    UnknownRelationError,
    ValueDecoder,
)
from otpy.pg.wal_reader.typefetch import fetch_missing_types

DOC = Path(__file__).resolve().parents[3] / "docs" / "types.md"
START, END = "<!-- types-table:start -->", "<!-- types-table:end -->"

BYTES = object()  # "some bytes": a documented fallback whose exact content is the server's
NAN = object()  # float NaN (never equal to itself)
DNAN = object()  # Decimal NaN


@attrs.frozen
class Case:
    pg_type: str
    literal: str
    expected: Any
    binary: Any = attrs.field(default=attrs.Factory(lambda self: self.expected, takes_self=True))
    note: str = ""


C = Case
UTC530 = timezone(timedelta(hours=5, minutes=30))

CASES: list[Case] = [
    C("boolean", "true", True),
    C("smallint", "-32768", -32768),
    C("integer", "2147483647", 2147483647),
    C("bigint", "-9223372036854775808", -9223372036854775808),
    C("oid", "4294967295", 4294967295),
    C("real", "1.5", 1.5, note="NaN and ±Infinity become float nan/±inf"),
    C("real", "'NaN'", NAN),
    C("double precision", "3.141592653589793", 3.141592653589793),
    C("double precision", "'-Infinity'", -math.inf),
    C("double precision", "1e300", 1e300),
    C("numeric", "'12345.678900'", Decimal("12345.678900"), note="NaN, ±Infinity as Decimal"),
    C("numeric", "'NaN'", DNAN),
    C("numeric", "'Infinity'", Decimal("Infinity")),
    C("numeric(5,2)", "-1.5", Decimal("-1.50")),
    C("money", "1234.56", Decimal("1234.56"), note="assumes lc_monetary with '.' and 2 decimals"),
    C("money", "-0.5", Decimal("-0.50")),
    C("text", "'héllo ''q'' \\ x'", "héllo 'q' \\ x"),
    C("character varying(10)", "'abc'", "abc"),
    C("character(4)", "'ab'", "ab  ", note="blank-padded, as PostgreSQL returns it"),
    C("name", "'pg_class'", "pg_class"),
    C('"char"', "'x'", "x"),
    C("bytea", "'\\x00ff10'::bytea", b"\x00\xff\x10"),
    C("date", "'2024-02-29'", date(2024, 2, 29), note="±infinity -> date.max / date.min"),
    C("date", "'infinity'", date.max),
    C("date", "'-infinity'", date.min),
    C("time", "'13:14:15.123456'", time(13, 14, 15, 123456)),
    C("time with time zone", "'13:14:15+05:30'", time(13, 14, 15, tzinfo=UTC530)),
    C(
        "timestamp",
        "'2024-01-02 03:04:05.678'",
        datetime(2024, 1, 2, 3, 4, 5, 678000),
        note="±infinity -> datetime.max / datetime.min",
    ),
    C("timestamp", "'infinity'", datetime.max),
    C(
        "timestamp with time zone",
        "'2024-01-02 03:04:05+05:30'",
        datetime(2024, 1, 1, 21, 34, 5, tzinfo=UTC),
        note="aware; ±infinity -> datetime.max / datetime.min with tzinfo=UTC",
    ),
    C("timestamp with time zone", "'-infinity'", datetime.min.replace(tzinfo=UTC)),
    C(
        "interval",
        "'1 day 02:03:04.5'",
        timedelta(days=1, hours=2, minutes=3, seconds=4.5),
        note="a month counts 30 days, a year 365 (psycopg)",
    ),
    C("interval", "'1 year 2 mons 3 days'", timedelta(days=428)),
    C(
        "json",
        '\'{"a": [1, null, "x"]}\'',
        {"a": [1, None, "x"]},
        note="any JSON value (dict, list, str, int, float, bool); JSON null -> JSON_NULL",
    ),
    C("json", "'null'", JSON_NULL),
    C(
        "jsonb",
        '\'{"b": true, "n": 1.5}\'',
        {"b": True, "n": 1.5},
        note="any JSON value (dict, list, str, int, float, bool); JSON null -> JSON_NULL",
    ),
    C("jsonb", "'null'", JSON_NULL),
    C("jsonb", "'\"str\"'", "str"),
    C(
        "uuid",
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ),
    C(
        "inet",
        "'192.168.0.1/24'",
        ipaddress.ip_interface("192.168.0.1/24"),
        note="an address without prefix -> IPv4Address/IPv6Address",
    ),
    C("inet", "'::1'", ipaddress.ip_address("::1")),
    C("cidr", "'10.0.0.0/8'", ipaddress.ip_network("10.0.0.0/8")),
    C("macaddr", "'08:00:2b:01:02:03'", "08:00:2b:01:02:03", note="the text form"),
    C("macaddr8", "'08:00:2b:01:02:03:04:05'", "08:00:2b:01:02:03:04:05", note="the text form"),
    C("bit(4)", "B'1010'", "1010", note="the text form ('0'/'1')"),
    C("bit varying", "B'10110'", "10110", note="the text form ('0'/'1')"),
    C("xml", "'<a>b</a>'", "<a>b</a>"),
    C("tsvector", "'a fat:2A cat:1,3'", "'a' 'cat':1,3 'fat':2A", note="the text form"),
    C("tsquery", "'fat & cat'", "'fat' & 'cat'", BYTES, note="text form; binary: raw bytes"),
    C("point", "'(1.5,-2)'", (1.5, -2.0), note="(x, y)"),
    C("line", "'{1,2,3}'", "{1,2,3}", BYTES, note="text form; binary: raw bytes"),
    C("lseg", "'[(1,2),(3,4)]'", "[(1,2),(3,4)]", BYTES, note="text form; binary: raw bytes"),
    C("box", "'(3,4),(1,2)'", "(3,4),(1,2)", BYTES, note="text form; binary: raw bytes"),
    C("path", "'[(1,2),(3,4)]'", "[(1,2),(3,4)]", BYTES, note="text form; binary: raw bytes"),
    C(
        "polygon",
        "'((1,2),(3,4),(5,1))'",
        "((1,2),(3,4),(5,1))",
        BYTES,
        note="text form; binary: raw bytes",
    ),
    C("circle", "'<(1,2),3>'", "<(1,2),3>", BYTES, note="text form; binary: raw bytes"),
    C("pg_lsn", "'16/B374D848'", LSN("16/B374D848")),
    C("xid", "'12345'", 12345),
    C("xid8", "'12345678901'", 12345678901),
    C("regclass", "'pg_class'", "pg_class", 1259, note="text: the name; binary: the OID"),
    C("int4range", "'[1,5)'", Range(1, 5), note="psycopg Range; empty -> Range(empty=True)"),
    C("int8range", "'empty'", Range(empty=True)),
    C("numrange", "'(1.5,)'", Range(Decimal("1.5"), None, "()")),
    C(
        "daterange",
        "'[2020-01-01,infinity)'",
        Range(date(2020, 1, 1), date.max),
        note="infinite bounds as for date",
    ),
    C("tsrange", "'[2020-01-01,2020-01-02)'", Range(datetime(2020, 1, 1), datetime(2020, 1, 2))),
    C(
        "tstzrange",
        "'[2020-01-01 00:00+00,)'",
        Range(datetime(2020, 1, 1, tzinfo=UTC), None),
    ),
    C(
        "int4multirange",
        "'{[1,3),[5,7)}'",
        Multirange([Range(1, 3), Range(5, 7)]),
        note="psycopg Multirange",
    ),
    C(
        "datemultirange",
        "'{[2020-01-01,2020-02-01)}'",
        Multirange([Range(date(2020, 1, 1), date(2020, 2, 1))]),
    ),
    C("integer[]", "'{1,NULL,3}'", [1, None, 3], note="NULL elements -> None; any dimensions"),
    C("integer[]", "'{{1,2},{3,4}}'", [[1, 2], [3, 4]]),
    C(
        "text[]",
        '\'{"NULL",NULL,"a b","q\\"x"}\'',
        ["NULL", None, "a b", 'q"x'],
        note='a quoted "NULL" stays a string',
    ),
    C("boolean[]", "'{t,f,NULL}'", [True, False, None]),
    C("double precision[]", "'{1.5,Infinity}'", [1.5, math.inf]),
    C("numeric[]", "'{1.5,-2}'", [Decimal("1.5"), Decimal("-2")]),
    C("bytea[]", "ARRAY['\\x01'::bytea]", [b"\x01"]),
    C("date[]", "'{2024-01-01,infinity}'", [date(2024, 1, 1), date.max]),
    C(
        "timestamp with time zone[]",
        "'{\"2024-01-01 00:00+00\"}'",
        [datetime(2024, 1, 1, tzinfo=UTC)],
    ),
    C("jsonb[]", "ARRAY['{\"a\": 1}', 'null', NULL]::jsonb[]", [{"a": 1}, JSON_NULL, None]),
    C(
        "uuid[]",
        "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'",
        [UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")],
    ),
    C(
        "inet[]",
        "'{10.0.0.1,::1}'",
        [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1")],
    ),
    C("money[]", "'{1.50}'", [Decimal("1.50")]),
    C("point[]", "ARRAY['(1,2)'::point]", [(1.0, 2.0)]),
    C("macaddr[]", "'{08:00:2b:01:02:03}'", ["08:00:2b:01:02:03"]),
    C("int4range[]", "ARRAY['[1,2)'::int4range]", [Range(1, 2)]),
]


def matches(actual: Any, expected: Any) -> bool:
    if expected is BYTES:
        return isinstance(actual, bytes)
    if expected is NAN:
        return isinstance(actual, float) and math.isnan(actual)
    if expected is DNAN:
        return isinstance(actual, Decimal) and actual.is_nan()
    return type(actual) is type(expected) and actual == expected and _same_shape(actual, expected)


def _same_shape(actual: Any, expected: Any) -> bool:
    """Equal *and* the same element types (1 == 1.0 == True would hide bugs)."""
    if isinstance(expected, list | tuple):
        return all(
            type(a) is type(e) and _same_shape(a, e) for a, e in zip(actual, expected, strict=True)
        )
    return True


def unsupported_cases(dsn: str) -> dict[int, str]:
    """Cases whose type this server cannot hold (e.g. xml without libxml), with the reason."""
    lacking: dict[int, str] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for index, case in enumerate(CASES):
            try:
                conn.execute(f"SELECT ({case.literal})::{case.pg_type}")  # type: ignore[arg-type]
            except (psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedObject) as exc:
                lacking[index] = f"the server lacks {case.pg_type}: {exc.diag.message_primary}"
    return lacking


@pytest.fixture(scope="module")
def wide(module_dsn: str) -> dict[str, Any]:
    """Rows of the wide table decoded in text and binary mode (rows: literals, NULLs).

    The table has a column per case the server supports; ``wide["lacking"]``
    gives the others, with the reason, so that exactly their tests skip.
    """
    lacking = unsupported_cases(module_dsn)
    cases = [(i, case) for i, case in enumerate(CASES) if i not in lacking]
    columns = ", ".join(f"c{i} {case.pg_type}" for i, case in cases)
    execute(module_dsn, f"CREATE TABLE wide (id int PRIMARY KEY, {columns})")
    cap = Capture(module_dsn, ["wide"])
    try:
        literals = ", ".join(case.literal for _, case in cases)
        execute(
            module_dsn,
            f"INSERT INTO wide VALUES (1, {literals})",
            "INSERT INTO wide (id) VALUES (2)",
        )
        out: dict[str, Any] = {"lacking": lacking}
        for mode, binary in (("text", False), ("binary", True)):
            decoder = PgOutputDecoder()
            values = ValueDecoder()
            rows = []
            for raw in cap.peek(1, binary=binary):
                message = decoder.decode(raw)
                if isinstance(message, Relation):
                    values.add_relation(message)
                elif isinstance(message, Insert):
                    rows.append(values.decode(message.relation_oid, message.new))
            out[mode] = rows
        return out
    finally:
        cap.drop()


@pytest.mark.parametrize("mode", ["text", "binary"])
@pytest.mark.parametrize(
    "index", range(len(CASES)), ids=[f"{c.pg_type}={c.literal}" for c in CASES]
)
def test_builtin_type(wide: dict[str, Any], mode: str, index: int) -> None:
    if index in wide["lacking"]:
        pytest.skip(wide["lacking"][index])
    case = CASES[index]
    values, nulls = wide[mode]
    expected = case.expected if mode == "text" else case.binary
    actual = values[f"c{index}"]
    assert matches(actual, expected), f"{case.pg_type} {case.literal}: {actual!r} != {expected!r}"
    assert nulls[f"c{index}"] is None  # SQL NULL is None, in every type


def describe(value: Any) -> str:
    """A short name of a value's Python type, descending into containers."""
    if value is JSON_NULL:
        return "`JSON_NULL`"
    if isinstance(value, list):
        inner = [v for v in value if v is not None]
        return f"list[{describe(inner[0]).strip('`')}]" if inner else "list"
    if isinstance(value, tuple) and not isinstance(value, LSN):
        return "tuple[" + ", ".join(describe(v) for v in value) + "]"
    if isinstance(value, Range):
        return f"Range[{describe(value.lower).strip('`')}]" if value.lower is not None else "Range"
    if isinstance(value, Multirange):
        return f"Multirange[{describe(value[0].lower)}]"
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__name__
    module = {"otpy.pg.replication.lsn": "otpy"}.get(cls.__module__, cls.__module__)
    return f"{module}.{cls.__qualname__}"


def render_table(wide: dict[str, Any], documented: dict[str, str]) -> str:
    """The docs table from the decoded rows; a type this server lacks keeps its documented row."""
    lines = [
        "| PostgreSQL type | Python (text format) | Python (binary format) | Notes |",
        "|---|---|---|---|",
    ]
    seen: set[str] = set()
    for index, case in enumerate(CASES):
        if case.pg_type in seen:
            continue
        seen.add(case.pg_type)
        if index in wide["lacking"]:
            lines.append(documented.get(case.pg_type, f"| `{case.pg_type}` | (not checked) |"))
            continue
        text = describe(wide["text"][0][f"c{index}"])
        binary = describe(wide["binary"][0][f"c{index}"])
        lines.append(f"| `{case.pg_type}` | {text} | {binary} | {case.note} |")
    return "\n".join(lines)


def test_docs_type_table_matches_behaviour(wide: dict[str, Any]) -> None:
    text = DOC.read_text()
    start, end = text.index(START) + len(START), text.index(END)
    documented = {
        line.split("`")[1]: line for line in text[start:end].splitlines() if line.startswith("| `")
    }
    table = render_table(wide, documented)
    if os.environ.get("OTPY_UPDATE_DOCS"):
        DOC.write_text(text[:start] + "\n" + table + "\n" + text[end:])
        text = DOC.read_text()
        start, end = text.index(START) + len(START), text.index(END)
    assert text[start:end].strip() == table, "docs/types.md is stale: run with OTPY_UPDATE_DOCS=1"


# --------------------------------------------------------------------------- user types

USER_TYPES_SQL = [
    "CREATE EXTENSION IF NOT EXISTS hstore",
    "CREATE EXTENSION IF NOT EXISTS citext",
    "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
    "CREATE TYPE pair AS (a integer, b text)",
    "CREATE DOMAIN posint AS integer CHECK (VALUE > 0)",
    "CREATE DOMAIN moody AS mood",
    "CREATE TYPE floatrange AS RANGE (subtype = float8)",
    """CREATE TABLE user_types (
        id int PRIMARY KEY, m mood, p pair, d posint, dm moody, h hstore, r floatrange,
        ms mood[], ci citext, cis citext[], ds posint[]
    )""",
]


@pytest.fixture(scope="module")
def user_types(module_dsn: str, server_features: Any) -> None:
    """The user-defined types and their table (once per module, whichever test runs first)."""
    server_features.skip_unless("hstore", "citext")
    execute(module_dsn, *USER_TYPES_SQL)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_user_types_are_fetched_and_registered(
    module_dsn: str, user_types: None, binary: bool, caplog: pytest.LogCaptureFixture
) -> None:
    cap = Capture(module_dsn, ["user_types"])
    try:
        execute(
            module_dsn,
            f"""INSERT INTO user_types VALUES ({int(binary)}, 'happy', ROW(1, 'x'), 5, 'ok',
                'a=>1, b=>NULL', '[1.5,2.5)', '{{sad,happy}}', 'MiXed', '{{A,b}}', '{{1,2}}')""",
        )
        decoder = PgOutputDecoder()
        values = ValueDecoder()
        types: list[Type] = []
        rows = []
        for raw in cap.peek(1, binary=binary):
            message = decoder.decode(raw)
            if isinstance(message, Type):
                types.append(message)
                values.add_type(message)
            elif isinstance(message, Relation):
                values.add_relation(message)
                relation = message
            elif isinstance(message, Insert):
                rows.append(message)
        column_oids = {c.name: c.type_oid for c in relation.columns}
        names = {t.oid: (t.namespace, t.name) for t in types}
        assert names[column_oids["m"]] == ("public", "mood")
        assert names[column_oids["p"]] == ("public", "pair")
        assert names[column_oids["h"]] == ("public", "hstore")
        assert names[column_oids["r"]] == ("public", "floatrange")
        # Domains: the Type message carries the domain's OID but its *base* type's name.
        assert names[column_oids["d"]] == ("", "int4")
        assert names[column_oids["dm"]] == ("public", "mood")
        column_oids = {c.name: c.type_oid for c in relation.columns}
        assert values.missing_types() >= {column_oids[c] for c in ("m", "p", "d", "h", "r", "ci")}

        # Before fetching: no crash, text (or bytes) fallback, logged once per type.
        with caplog.at_level(logging.WARNING):
            before = values.decode(relation.oid, rows[0].new)
            values.decode(relation.oid, rows[0].new)
        if binary:
            assert isinstance(before["m"], bytes) and before["m"] == b"happy"
        else:
            assert before["m"] == "happy" and before["h"] == '"a"=>"1", "b"=>NULL'
        warned = [r for r in caplog.records if "no loader" in r.getMessage()]
        assert len(warned) == len({r.getMessage() for r in warned})

        with psycopg.connect(module_dsn) as conn:
            fetch_missing_types(conn, values)
        assert values.missing_types() == frozenset()
        row = values.decode(relation.oid, rows[0].new)
        assert isinstance(row["m"], Enum) and row["m"].name == "happy"
        assert tuple(row["p"]) == (1, "x") and type(row["p"]).__name__ == "pair"
        assert row["d"] == 5 and type(row["d"]) is int
        assert isinstance(row["dm"], Enum) and row["dm"].name == "ok"
        assert row["h"] == {"a": "1", "b": None}
        assert row["r"] == Range(1.5, 2.5)
        assert [m.name for m in row["ms"]] == ["sad", "happy"]
        assert row["ci"] == "MiXed"
        assert row["cis"] == ["A", "b"]
        assert row["ds"] == [1, 2]
    finally:
        cap.drop()


# --------------------------------------------------------------------------- robustness


def relation_of(*type_oids: int) -> Relation:
    from otpy.pg.replication import Column

    return Relation(
        None, 90000, "public", "t", "d",
        tuple(Column(0, f"c{i}", oid, -1) for i, oid in enumerate(type_oids)),
    )  # fmt: skip


def test_a_value_that_fails_to_load_is_delivered_as_text_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    values = ValueDecoder()
    values.add_relation(relation_of(23, 1114, 1083))
    bad = TupleData(b"ttt", (b"1", b"10000-01-01 00:00:00", b"24:00:00"))
    with caplog.at_level(logging.WARNING):
        first = values.decode(90000, bad)
        second = values.decode(90000, bad)
    assert first == second == {"c0": 1, "c1": "10000-01-01 00:00:00", "c2": "24:00:00"}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # one per type, not per row
    assert "timestamp" in messages[0] and "column t.c1" in messages[0]
    good = TupleData(b"ttt", (b"2", b"2020-01-01 00:00:00", b"12:00:00"))
    assert values.decode(90000, good) == {
        "c0": 2,
        "c1": datetime(2020, 1, 1),
        "c2": time(12),
    }


def test_unknown_type_falls_back_to_text_or_bytes() -> None:
    values = ValueDecoder()
    values.add_relation(relation_of(99999, 99999, 99999))
    assert values.missing_types() == {99999}
    row = values.decode(90000, TupleData(b"tbu", (b"caf\xc3\xa9", b"\x00\x01", UNCHANGED_TOAST)))
    assert row == {"c0": "café", "c1": b"\x00\x01", "c2": UNCHANGED_TOAST}
    values.give_up(99999)
    assert values.missing_types() == frozenset()


def test_relation_errors_and_replacement() -> None:
    values = ValueDecoder()
    with pytest.raises(UnknownRelationError):
        values.decode(90000, TupleData(b"t", (b"1",)))
    values.add_relation(relation_of(23))
    with pytest.raises(RelationMismatchError):
        values.decode(90000, TupleData(b"tt", (b"1", b"2")))
    assert values.decode(90000, TupleData(b"t", (b"1",))) == {"c0": 1}
    # A new Relation for the same OID (ALTER TABLE) replaces the cached plan.
    values.add_relation(relation_of(25, 16))
    assert values.decode(90000, TupleData(b"tt", (b"1", b"t"))) == {"c0": "1", "c1": True}


def test_any_column_name_and_no_columns_at_all() -> None:
    # Rows are built by a function generated per relation: names that look
    # like code must stay data, and a table may have no columns (CREATE TABLE t()).
    from otpy.pg.replication import Column

    names = ["a'b", 'c"d', "e\\f", "g\nh}", "{i: 1}", "é 表", "v0", "__import__('os')", ""]
    values = ValueDecoder()
    values.add_relation(
        Relation(None, 90001, "public", "odd", "d",
                 tuple(Column(0, name, 23, -1) for name in names))
    )  # fmt: skip
    row = values.decode(90001, TupleData(b"t" * len(names), tuple(b"%d" % i for i in range(9))))
    assert row == {name: i for i, name in enumerate(names)}
    assert list(row) == names
    values.add_relation(Relation(None, 90002, "public", "empty", "d", ()))
    assert values.decode(90002, TupleData(b"", ())) == {}
    with pytest.raises(RelationMismatchError):
        values.decode(90002, TupleData(b"t", (b"1",)))


def test_custom_loader_after_refresh() -> None:
    from psycopg.adapt import Loader

    class Upper(Loader):
        def load(self, data: Any) -> str:
            return bytes(data).decode().upper()

    values = ValueDecoder()
    values.add_relation(relation_of(25))
    assert values.decode(90000, TupleData(b"t", (b"abc",))) == {"c0": "abc"}
    values.adapters.register_loader(25, Upper)
    values.refresh()
    assert values.decode(90000, TupleData(b"t", (b"abc",))) == {"c0": "ABC"}


def test_context_adapters_are_copied_not_modified() -> None:
    adapters = psycopg.adapters
    before = adapters.get_loader(1082, psycopg.pq.Format.TEXT)
    ValueDecoder(None)
    assert adapters.get_loader(1082, psycopg.pq.Format.TEXT) is before


def test_decoder_uses_connection_context(module_dsn: str) -> None:
    with psycopg.connect(module_dsn) as conn:
        conn.execute("SET TimeZone = 'Asia/Kolkata'")
        values = ValueDecoder(conn)
        values.add_relation(relation_of(1184))
        row = values.decode(90000, TupleData(b"b", (b"\x00\x00\x00\x00\x00\x00\x00\x00",)))
    assert row["c0"] == datetime(2000, 1, 1, tzinfo=UTC)
    assert row["c0"].utcoffset() == timedelta(hours=5, minutes=30)


Loader = Callable[[bytes], Any]


async def test_afetch_missing_types_on_a_trio_connection(module_dsn: str) -> None:
    """The reader's path: user types resolved with the trio psycopg connection."""
    from otpy.pg.connection import TrioConnection
    from otpy.pg.wal_reader.typefetch import afetch_missing_types

    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN CREATE TYPE amood AS ENUM ('meh', 'yay'); "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        row = conn.execute("SELECT 'amood'::regtype::oid, 'amood[]'::regtype::oid").fetchone()
        assert row is not None
        enum_oid, array_oid = int(row[0]), int(row[1])
    values = ValueDecoder()
    values.add_relation(relation_of(enum_oid, array_oid))
    assert values.missing_types() == {enum_oid, array_oid}
    async with await TrioConnection.connect(module_dsn, autocommit=True) as aconn:
        await afetch_missing_types(aconn, values)
    assert values.missing_types() == frozenset()
    row = values.decode(90000, TupleData(b"tt", (b"yay", b"{meh,yay}")))
    assert isinstance(row["c0"], Enum) and row["c0"].name == "yay"
    assert [m.name for m in row["c1"]] == ["meh", "yay"]


BUILTIN_OIDS = sorted(
    {info.oid for info in psycopg.adapters.types if info.oid < 16384}
    | {info.array_oid for info in psycopg.adapters.types if 0 < info.array_oid < 16384}
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(BUILTIN_OIDS), min_size=1, max_size=6),
    st.data(),
)
def test_garbage_values_never_poison_a_row(oids: list[int], data: st.DataObject) -> None:
    """No value, however wrong for its type, makes decode raise: it comes back as text/bytes."""
    values = ValueDecoder()
    values.add_relation(relation_of(*oids))
    kinds = bytes(data.draw(st.sampled_from(b"tbn")) for _ in oids)
    raw = tuple(None if kind == ord("n") else data.draw(st.binary(max_size=24)) for kind in kinds)
    row = values.decode(90000, TupleData(kinds, raw))
    assert list(row) == [f"c{i}" for i in range(len(oids))]
    for kind, decoded in zip(kinds, row.values(), strict=True):
        assert (decoded is None) if kind == ord("n") else (decoded is not UNCHANGED_TOAST)
