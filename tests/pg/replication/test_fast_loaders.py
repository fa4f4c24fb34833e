"""The fast json/jsonb and inet loaders give exactly what psycopg's own loaders give.

:mod:`otpy.pg.replication.loaders` parses JSON with json's C scanner and host
addresses with ``inet_pton`` instead of going through ``json.loads`` and
``ipaddress.ip_address``; every value below, as the server sends it in text
and in binary format, must load to an equal value of the same type (JSON
``null`` excepted: it is :data:`JSON_NULL` by design).
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import psycopg
import pytest
from psycopg.adapt import Transformer
from psycopg.pq import Format
from psycopg.types.json import set_json_loads

from otpy.pg.replication import JSON_NULL, ValueDecoder, loaders

JSON_VALUES = [
    '{"id": 1, "name": "item 1", "tags": ["a", "b"]}',
    "[]",
    "{}",
    '"text with \\"quotes\\" and \\u00e9t\\u00e9 \\ud83d\\ude00"',
    "12345678901234567890",
    "1.5e300",
    "-0.0",
    "true",
    "null",
    '{"nested": {"deep": [1, 2.5, null, {"x": "é"}]}}',
    "  [1, 2]  ",  # json (not jsonb) keeps surrounding whitespace
    '{"a": 1, "a": 2}',  # json keeps duplicate keys, the last wins
    "NaN",  # not valid JSON: json.loads accepts it, so must we (json only)
    "[[], {}, [[]], [{}]]",
    '{"\u00e9": "\u00fc", "": "", "k": false}',
    "0",
    "false",
    "-1.25e-10",
    "1e400",  # jsonb keeps it as a numeric: 1 and 400 zeros, an int in Python
    '"\\\\ back\\\\slash"',
    '"tab\\tnewline\\n"',
]
INET_VALUES = [
    "10.1.2.3",
    "0.0.0.0",
    "255.255.255.255",
    "192.168.0.1/24",
    "10.0.0.0/8",
    "::1",
    "::",
    "2001:db8::ff00:42:8329",
    "::ffff:1.2.3.4",
    "2001:db8::/32",
    "fe80::1/64",
    "1.2.3.4/32",  # a full prefix: the server prints a host address
    "0.0.0.0/0",
    "::/0",
    "::1/128",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "::ffff:0:0",
    "64:ff9b::192.0.2.33",
    "fe80::1:2:3:4",
]


def _raw(conn: psycopg.Connection[Any], sql_type: str, literal: str, binary: bool) -> Any:
    cur = conn.cursor(binary=binary)
    try:
        cur.execute(f"SELECT %s::{sql_type}", [literal])
    except psycopg.DataError:
        conn.rollback()
        return None
    assert cur.pgresult is not None
    return cur.pgresult.ftype(0), cur.pgresult.get_value(0, 0)


def _check(conn: psycopg.Connection[Any], sql_type: str, literals: list[str]) -> int:
    ours = ValueDecoder(conn)
    theirs = Transformer(conn)  # psycopg's loaders, untouched
    checked = 0
    for literal in literals:
        for fmt in (Format.TEXT, Format.BINARY):
            got = _raw(conn, sql_type, literal, fmt == Format.BINARY)
            if got is None:  # not a value of this type (NaN in jsonb)
                continue
            oid, data = got
            expected = theirs.get_loader(oid, fmt).load(data)
            # The column-by-column load, and the whole-row path's (load_sequence).
            row = Transformer(ours.fast_context())
            row.set_loader_types([oid], fmt)
            for actual in (ours._load_function(oid, fmt)(data), row.load_sequence([data])[0]):
                if expected is None:
                    assert actual is JSON_NULL
                else:
                    assert type(actual) is type(expected), (sql_type, literal, fmt)
                    assert actual == expected, (sql_type, literal, fmt)
                    assert json.dumps(actual, default=str) == json.dumps(expected, default=str)
            checked += 1
    return checked


@pytest.mark.parametrize("sql_type", ["json", "jsonb"])
def test_json_values_load_as_json_loads_gives_them(module_dsn: str, sql_type: str) -> None:
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        assert _check(conn, sql_type, JSON_VALUES) >= 2 * (len(JSON_VALUES) - 1)


def test_inet_values_load_as_psycopg_loads_them(module_dsn: str) -> None:
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        assert _check(conn, "inet", INET_VALUES) == 2 * len(INET_VALUES)


def test_inet_values_are_the_same_objects_in_every_way(module_dsn: str) -> None:
    """Hash, repr, text, packed form and scope of what the fast inet loaders build.

    Host addresses are built by filling ``ipaddress``'s slots (see
    ``loaders._address_builders``): equal is not enough, the objects must
    behave the same anywhere a user puts them (sets, dict keys, logs).
    """
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        ours = ValueDecoder(conn)
        theirs = Transformer(conn)
        for literal in INET_VALUES:
            for fmt in (Format.TEXT, Format.BINARY):
                oid, data = _raw(conn, "inet", literal, fmt == Format.BINARY)
                expected = theirs.get_loader(oid, fmt).load(data)
                fast = Transformer(ours.fast_context()).get_loader(oid, fmt).load(data)
                for actual in (ours._load_function(oid, fmt)(data), fast):
                    assert type(actual) is type(expected), (literal, fmt)
                    assert actual == expected and hash(actual) == hash(expected)
                    assert repr(actual) == repr(expected) and str(actual) == str(expected)
                    assert actual.packed == expected.packed, (literal, fmt)
                    assert getattr(actual, "scope_id", None) == getattr(expected, "scope_id", None)
                    assert {actual: 1}[expected] == 1


def test_the_address_shortcut_is_taken_here_and_checked() -> None:
    """On this Python the slot-filling builders pass their self-check (so the tests above
    exercise them), and they give the constructor's addresses at the edges of the ranges."""
    assert loaders._ipv4 is loaders._slot_ipv4 and loaders._ipv6 is loaders._slot_ipv6
    for value in (0, 1, 2**31, 2**32 - 1):
        assert loaders._ipv4(value) == IPv4Address(value)
        assert str(loaders._ipv4(value)) == str(IPv4Address(value))
    for value in (0, 1, 2**64, 2**128 - 1):
        assert loaders._ipv6(value) == IPv6Address(value)
        assert str(loaders._ipv6(value)) == str(IPv6Address(value))


def test_a_custom_json_loads_function_is_still_used(module_dsn: str) -> None:
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        set_json_loads(lambda data: ("custom", bytes(data)), conn)
        decoder = ValueDecoder(conn)
        for binary in (False, True):
            oid, data = _raw(conn, "jsonb", '{"a": 1}', binary)
            fmt = Format.BINARY if binary else Format.TEXT
            assert decoder._load_function(oid, fmt)(data)[0] == "custom"
            # The whole-row path (psycopg's load_sequence) takes the same load.
            row = Transformer(decoder.fast_context())
            row.set_loader_types([oid], fmt)
            assert row.load_sequence([data])[0][0] == "custom"
