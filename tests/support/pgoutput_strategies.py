"""Hypothesis strategies for pgoutput messages, shared by the decoder's property tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from otpy.pg.replication import (
    LSN,
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    Column,
    Commit,
    CommitPrepared,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputMessage,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    TupleData,
    Type,
    Update,
)

u8 = st.integers(0, 255)
u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
lsns = st.integers(0, 2**64 - 1).map(LSN)
times = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
names = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20)
xids = st.none() | u32


@st.composite
def tuples(draw: Any) -> TupleData:
    kinds: list[int] = []
    values: list[Any] = []
    for kind in draw(st.lists(st.sampled_from(b"ntbu"), max_size=12)):
        kinds.append(kind)
        if kind == ord("n"):
            values.append(None)
        elif kind == ord("u"):
            values.append(UNCHANGED_TOAST)
        else:
            values.append(draw(st.binary(max_size=40)))
    return TupleData(bytes(kinds), tuple(values))


columns = st.builds(Column, u8, names, u32, i32)
messages: st.SearchStrategy[PgOutputMessage] = st.one_of(
    st.builds(Begin, lsns, times, u32),
    st.builds(Commit, u8, lsns, lsns, times),
    st.builds(Origin, lsns, names),
    st.builds(
        Relation,
        xids,
        u32,
        names,
        names,
        st.sampled_from("dnfi"),
        st.lists(columns, max_size=8).map(tuple),
    ),
    st.builds(Type, xids, u32, names, names),
    st.builds(Insert, xids, u32, tuples()),
    st.builds(Update, xids, u32, st.none() | tuples(), st.none(), tuples()),
    st.builds(Update, xids, u32, st.none(), tuples(), tuples()),
    st.builds(Delete, xids, u32, tuples(), st.none()),
    st.builds(Delete, xids, u32, st.none(), tuples()),
    st.builds(Truncate, xids, u8, st.lists(u32, max_size=10).map(tuple)),
    st.builds(Message, xids, u8, lsns, names, st.binary(max_size=60)),
    st.builds(StreamStart, u32, st.booleans()),
    st.just(StreamStop()),
    st.builds(StreamCommit, u32, u8, lsns, lsns, times),
    st.builds(StreamAbort, u32, u32),
    st.builds(StreamAbort, u32, u32, lsns, times),  # protocol 4, streaming = parallel
    st.builds(BeginPrepare, lsns, lsns, times, u32, names),
    st.builds(Prepare, u8, lsns, lsns, times, u32, names),
    st.builds(CommitPrepared, u8, lsns, lsns, times, u32, names),
    st.builds(RollbackPrepared, u8, lsns, lsns, times, times, u32, names),
    st.builds(StreamPrepare, u8, lsns, lsns, times, u32, names),
)

STREAMABLE = (Relation, Type, Insert, Update, Delete, Truncate, Message)


def in_stream_for(message: PgOutputMessage) -> bool:
    return isinstance(message, STREAMABLE) and message.xid is not None


def mutate(data: st.DataObject, raw: bytes) -> bytes:
    """``raw`` with 1-4 bytes flipped, set to edge values, deleted, inserted, or cut off."""
    mutated = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, max(len(mutated) - 1, 0)))
        action = data.draw(st.sampled_from(["flip", "set", "delete", "insert", "cut"]))
        if not mutated or action == "insert":
            mutated.insert(position, data.draw(u8))
        elif action == "flip":
            mutated[position] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "set":
            mutated[position] = data.draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
        elif action == "delete":
            del mutated[position]
        else:
            del mutated[position:]
    return bytes(mutated)
