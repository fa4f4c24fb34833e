"""The type-fetch protocol, written once and driven twice: checked without a server.

:func:`~otpy.pg.wal_reader.typefetch.resolve_missing_types` yields the
catalog queries it needs and is sent their answers.  Here the answers are a
script (what PostgreSQL would say about a domain over an enum), fed to the
protocol by hand and through both drivers, with fake connections that answer
from the same script: the three must ask the same questions and leave the
decoder in the same state.
"""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import sql
from psycopg.types import TypeInfo
from psycopg.types.enum import EnumInfo

from otpy.pg.replication.pgoutput import Column, Relation, TupleData, Type
from otpy.pg.replication.values import ValueDecoder
from otpy.pg.wal_reader.typefetch import (
    TYPE_QUERY,
    DescribeTypes,
    FetchInfo,
    TypeQuery,
    afetch_missing_types,
    fetch_missing_types,
    resolve_missing_types,
)

MOOD, MOOD_ARRAY, MOOD_D, MOOD_D_ARRAY = 70001, 70002, 70010, 70011
MOOD_NAME = sql.Identifier("public", "mood")

#: What the catalog says, per query: TYPE_QUERY rows per OID, and the enum's info.
ROWS = {
    MOOD_D: (MOOD_D, "public", "mood_d", "d", MOOD, 0, MOOD_D_ARRAY, "E"),
    MOOD: (MOOD, "public", "mood", "e", 0, 0, MOOD_ARRAY, "E"),
}
INFO = EnumInfo("mood", MOOD, MOOD_ARRAY, ["sad", "ok", "happy"])

#: The conversation the protocol must have: the domain, then its base, then the base's info.
CONVERSATION: list[TypeQuery] = [
    DescribeTypes([MOOD_D]),
    DescribeTypes([MOOD]),
    FetchInfo(EnumInfo, MOOD_NAME),
]


def _decoder() -> ValueDecoder:
    decoder = ValueDecoder()
    decoder.add_type(Type(None, MOOD_D, "public", "mood_d"))
    decoder.add_relation(Relation(None, 1, "public", "t", "d", (Column(0, "v", MOOD_D, -1),)))
    return decoder


def _answer(query: TypeQuery) -> Any:
    if isinstance(query, DescribeTypes):
        return [ROWS[oid] for oid in query.oids]
    assert query == FetchInfo(EnumInfo, MOOD_NAME)
    return INFO


def _resolved_as_the_catalog_says(decoder: ValueDecoder) -> None:
    assert decoder.missing_types() == frozenset()
    value = decoder.decode(1, TupleData(b"t", (b"happy",)))["v"]
    assert value.name == "happy"  # the domain loads as its base enum


def test_the_protocol_asks_for_the_domain_then_its_base_then_the_base_info() -> None:
    decoder = _decoder()
    protocol = resolve_missing_types(decoder)
    asked = [next(protocol)]
    with pytest.raises(StopIteration):
        while True:
            asked.append(protocol.send(_answer(asked[-1])))
    assert asked == CONVERSATION
    _resolved_as_the_catalog_says(decoder)


class _Lost(Exception):
    pass


class _LostConn:
    def execute(self, query: str, params: list[list[int]]) -> Any:
        raise _Lost("connection lost")


def test_a_failed_query_still_tells_the_decoder_the_attempt_is_over() -> None:
    decoder = _decoder()
    decoder.register_type(INFO)
    decoder.add_type(Type(None, MOOD, "public", "mood"))  # announced again: stale
    assert decoder.stale_types() == {MOOD}
    with pytest.raises(_Lost):
        fetch_missing_types(_LostConn(), decoder)  # type: ignore[arg-type]
    assert decoder.stale_types() == frozenset()


class _SyncConn:
    """Answers ``execute(TYPE_QUERY, [oids]).fetchall()`` from the script."""

    def __init__(self) -> None:
        self.asked: list[TypeQuery] = []

    def execute(self, query: str, params: list[list[int]]) -> _SyncConn:
        assert query == TYPE_QUERY
        self.asked.append(DescribeTypes(params[0]))
        self._rows = _answer(self.asked[-1])
        return self

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows  # type: ignore[no-any-return]


class _AsyncConn(_SyncConn):
    async def execute(self, query: str, params: list[list[int]]) -> _AsyncConn:  # type: ignore[override]
        super().execute(query, params)
        return self

    async def fetchall(self) -> list[tuple[Any, ...]]:  # type: ignore[override]
        return super().fetchall()


@pytest.fixture
def info_from_the_script(monkeypatch: pytest.MonkeyPatch) -> None:
    """``EnumInfo.fetch(conn, name)`` answered from the script, sync or async as conn is."""

    def fetch(cls: type[TypeInfo], conn: _SyncConn, name: sql.Identifier) -> Any:
        conn.asked.append(FetchInfo(cls, name))
        if isinstance(conn, _AsyncConn):

            async def later() -> Any:
                return _answer(conn.asked[-1])

            return later()
        return _answer(conn.asked[-1])

    monkeypatch.setattr(EnumInfo, "fetch", classmethod(fetch))


@pytest.mark.usefixtures("info_from_the_script")
def test_the_blocking_driver_runs_the_protocols_queries() -> None:
    decoder, conn = _decoder(), _SyncConn()
    fetch_missing_types(conn, decoder)  # type: ignore[arg-type]
    assert conn.asked == CONVERSATION
    _resolved_as_the_catalog_says(decoder)


@pytest.mark.usefixtures("info_from_the_script")
async def test_the_async_driver_runs_the_same_queries() -> None:
    decoder, conn = _decoder(), _AsyncConn()
    await afetch_missing_types(conn, decoder)  # type: ignore[arg-type]
    assert conn.asked == CONVERSATION
    _resolved_as_the_catalog_says(decoder)
