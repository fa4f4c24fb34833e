"""Golden tests: real pgoutput bytes from PostgreSQL decoded into the expected messages.

Every message kind PostgreSQL sends with protocol versions 1-3 (and 4 on 16+)
is produced by a real workload and captured with
``pg_logical_slot_peek_binary_changes``.  The suite runs on PostgreSQL 15 and
18: where the two differ, the tests check what holds on both.
"""

from __future__ import annotations

import struct
import typing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from pgcapture import Capture, execute

from otpy.pg.replication import (
    LSN,
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    Commit,
    CommitPrepared,
    DecodeError,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputDecoder,
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
    Type,
    Update,
    ValueDecoder,
    datetime_to_pg_timestamp,
    decode_message,
    encode_message,
)
from otpy.pg.testing import PostgresServer, create_database, drop_database

CaptureFactory = Callable[..., Capture]
ALL_MODES = [(proto, binary) for proto in (1, 2, 3) for binary in (False, True)]


def decode_all(raw: list[bytes]) -> list[PgOutputMessage]:
    decoder = PgOutputDecoder()
    messages = [decoder.decode(data) for data in raw]
    # The encoder is the exact inverse on real bytes, too.
    in_stream = False
    for data, message in zip(raw, messages, strict=True):
        assert encode_message(message) == data
        if isinstance(message, StreamStart | StreamStop):
            in_stream = isinstance(message, StreamStart)
        assert decode_message(data, in_stream=in_stream) == message
    return messages


def oid_of(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT %s::regclass::oid", [table]).fetchone()
        assert row is not None
        return int(row[0])


def of_type(messages: list[PgOutputMessage], cls: type[Any]) -> list[Any]:
    return [m for m in messages if isinstance(m, cls)]


@pytest.mark.parametrize(("proto", "binary"), ALL_MODES)
def test_begin_relation_insert_commit(
    capture_factory: CaptureFactory, module_dsn: str, proto: int, binary: bool
) -> None:
    table = f"simple_{proto}_{int(binary)}"
    execute(module_dsn, f"CREATE TABLE {table} (id int PRIMARY KEY, v text, n int)")
    cap = capture_factory([table])
    before = datetime.now(UTC)
    with psycopg.connect(module_dsn) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (7, 'héllo', NULL)")
        row = conn.execute("SELECT txid_current()").fetchone()
        assert row is not None
        xid = int(row[0]) & 0xFFFFFFFF
    messages = decode_all(cap.peek(proto, binary=binary))
    assert [type(m) for m in messages] == [Begin, Relation, Insert, Commit]
    begin, relation, insert, commit = messages
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert begin.xid == xid
    assert begin.final_lsn == commit.commit_lsn
    assert commit.end_lsn > commit.commit_lsn
    assert begin.commit_time == commit.commit_time
    assert before - timedelta(seconds=5) <= commit.commit_time <= datetime.now(UTC)
    assert relation == Relation(
        xid=None,
        oid=oid_of(module_dsn, table),
        namespace="public",
        name=table,
        replica_identity="d",
        columns=relation.columns,
    )
    assert isinstance(relation, Relation)
    assert [(c.name, c.type_oid, c.is_key, c.type_modifier) for c in relation.columns] == [
        ("id", 23, True, -1),
        ("v", 25, False, -1),
        ("n", 23, False, -1),
    ]
    assert isinstance(insert, Insert)
    assert insert.relation_oid == relation.oid and insert.xid is None
    if binary:
        assert insert.new.kinds == b"bbn"
        assert insert.new.values == (b"\x00\x00\x00\x07", "héllo".encode(), None)
    else:
        assert insert.new.kinds == b"ttn"
        assert insert.new.values == (b"7", "héllo".encode(), None)
    values = ValueDecoder()
    values.add_relation(relation)
    assert values.decode(relation.oid, insert.new) == {"id": 7, "v": "héllo", "n": None}


@pytest.fixture(scope="module")
def identity_tables(module_dsn: str) -> None:
    """One table per replica identity (once per module, whichever test runs first)."""
    execute(
        module_dsn,
        "CREATE TABLE ri_default (id int PRIMARY KEY, code text, v text)",
        "CREATE TABLE ri_full (id int, code text, v text)",
        "ALTER TABLE ri_full REPLICA IDENTITY FULL",
        "CREATE TABLE ri_index (id int, code text NOT NULL, v text)",
        "CREATE UNIQUE INDEX ri_index_code ON ri_index (code)",
        "ALTER TABLE ri_index REPLICA IDENTITY USING INDEX ri_index_code",
    )


@pytest.mark.parametrize(("proto", "binary"), [(1, False), (3, True)])
def test_update_delete_under_each_replica_identity(
    capture_factory: CaptureFactory,
    module_dsn: str,
    identity_tables: None,
    proto: int,
    binary: bool,
) -> None:
    cap = capture_factory(["ri_default", "ri_full", "ri_index"])
    statements = []
    for table in ("ri_default", "ri_full", "ri_index"):
        statements += [
            f"INSERT INTO {table} VALUES (1, 'a', 'x')",
            f"UPDATE {table} SET v = 'y'",  # key unchanged
            f"UPDATE {table} SET id = 2, code = 'b'",  # key changed
            f"DELETE FROM {table}",
        ]
    execute(module_dsn, *statements)
    messages = decode_all(cap.peek(proto, binary=binary))
    relations = {m.oid: m for m in of_type(messages, Relation)}
    values = ValueDecoder()
    for relation in relations.values():
        values.add_relation(relation)
    by_table: dict[str, list[Update | Delete]] = {}
    for m in messages:
        if isinstance(m, Update | Delete):
            by_table.setdefault(relations[m.relation_oid].name, []).append(m)

    def row(data: Any, oid: int) -> dict[str, Any] | None:
        return None if data is None else values.decode(oid, data)

    assert {r.name: r.replica_identity for r in relations.values()} == {
        "ri_default": "d",
        "ri_full": "f",
        "ri_index": "i",
    }
    results = {
        name: [
            (
                type(m).__name__,
                row(m.key, m.relation_oid),
                row(m.old, m.relation_oid),
                row(m.new, m.relation_oid) if isinstance(m, Update) else None,
            )
            for m in changes
        ]
        for name, changes in by_table.items()
    }
    assert results["ri_default"] == [
        ("Update", None, None, {"id": 1, "code": "a", "v": "y"}),
        ("Update", {"id": 1, "code": None, "v": None}, None, {"id": 2, "code": "b", "v": "y"}),
        ("Delete", {"id": 2, "code": None, "v": None}, None, None),
    ]
    assert results["ri_full"] == [
        ("Update", None, {"id": 1, "code": "a", "v": "x"}, {"id": 1, "code": "a", "v": "y"}),
        ("Update", None, {"id": 1, "code": "a", "v": "y"}, {"id": 2, "code": "b", "v": "y"}),
        ("Delete", None, {"id": 2, "code": "b", "v": "y"}, None),
    ]
    assert results["ri_index"] == [
        ("Update", None, None, {"id": 1, "code": "a", "v": "y"}),
        ("Update", {"id": None, "code": "a", "v": None}, None, {"id": 2, "code": "b", "v": "y"}),
        ("Delete", {"id": None, "code": "b", "v": None}, None, None),
    ]
    # The key columns are flagged in the Relation.
    flags = {r.name: [c.name for c in r.columns if c.is_key] for r in relations.values()}
    assert flags == {"ri_default": ["id"], "ri_full": ["id", "code", "v"], "ri_index": ["code"]}


BIG_SQL = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 320) g)"  # 10 kB


@pytest.mark.parametrize(("proto", "binary"), [(1, False), (2, True)])
def test_unchanged_toast_is_a_sentinel_not_null(
    capture_factory: CaptureFactory, module_dsn: str, proto: int, binary: bool
) -> None:
    table = f"toasty_{proto}"
    execute(
        module_dsn,
        f"CREATE TABLE {table} (id int PRIMARY KEY, small text, big text, gone text)",
        f"ALTER TABLE {table} ALTER big SET STORAGE EXTERNAL",
    )
    cap = capture_factory([table])
    execute(
        module_dsn,
        f"INSERT INTO {table} VALUES (1, 'a', {BIG_SQL}, NULL)",
        f"UPDATE {table} SET small = 'b'",
    )
    with psycopg.connect(module_dsn) as conn:
        big_row = conn.execute(f"SELECT big FROM {table}").fetchone()
        assert big_row is not None
        big = big_row[0]
    assert len(big) == 10240
    messages = decode_all(cap.peek(proto, binary=binary))
    (relation,) = of_type(messages, Relation)
    (insert,) = of_type(messages, Insert)
    (update,) = of_type(messages, Update)
    assert update.new.kinds[2:3] == b"u" and update.new.values[2] is UNCHANGED_TOAST
    values = ValueDecoder()
    values.add_relation(relation)
    assert values.decode(relation.oid, insert.new) == {
        "id": 1,
        "small": "a",
        "big": big,
        "gone": None,
    }
    decoded = values.decode(relation.oid, update.new)
    assert decoded == {"id": 1, "small": "b", "big": UNCHANGED_TOAST, "gone": None}
    assert decoded["big"] is not None


def test_truncate_of_several_tables_with_flags(
    capture_factory: CaptureFactory, module_dsn: str
) -> None:
    execute(
        module_dsn,
        "CREATE TABLE tr_a (id serial PRIMARY KEY)",
        "CREATE TABLE tr_b (id serial PRIMARY KEY)",
        "CREATE TABLE tr_c (id int PRIMARY KEY, a int REFERENCES tr_a)",
    )
    cap = capture_factory(["tr_a", "tr_b", "tr_c"])
    execute(
        module_dsn,
        "TRUNCATE tr_a, tr_b CASCADE",
        "TRUNCATE tr_b RESTART IDENTITY",
        "TRUNCATE tr_a, tr_b RESTART IDENTITY CASCADE",
        "TRUNCATE tr_c",
    )
    oids = {name: oid_of(module_dsn, name) for name in ("tr_a", "tr_b", "tr_c")}
    for proto in (1, 2, 3):
        truncates = of_type(decode_all(cap.peek(proto)), Truncate)
        got = [(t.cascade, t.restart_identity, t.options, set(t.relation_oids)) for t in truncates]
        assert got == [
            (True, False, 1, {oids["tr_a"], oids["tr_b"], oids["tr_c"]}),
            (False, True, 2, {oids["tr_b"]}),
            (True, True, 3, {oids["tr_a"], oids["tr_b"], oids["tr_c"]}),
            (False, False, 0, {oids["tr_c"]}),
        ]
        assert all(t.xid is None for t in truncates)


def test_logical_messages_transactional_and_not(
    capture_factory: CaptureFactory, module_dsn: str
) -> None:
    execute(module_dsn, "CREATE TABLE IF NOT EXISTS msg_t (id int PRIMARY KEY)")
    cap = capture_factory(["msg_t"])
    execute(
        module_dsn,
        "SELECT pg_logical_emit_message(false, 'otpy', 'outside')",
        "BEGIN",
        "INSERT INTO msg_t VALUES (1)",
        "SELECT pg_logical_emit_message(true, 'otpy/tx', '\\x00ff'::bytea)",
        "SELECT pg_logical_emit_message(false, 'otpy/nt', 'not transactional')",
        "COMMIT",
        "BEGIN",
        "SELECT pg_logical_emit_message(true, 'otpy', 'rolled back')",
        "SELECT pg_logical_emit_message(false, 'otpy', 'survives rollback')",
        "ROLLBACK",
    )
    assert of_type(decode_all(cap.peek(1)), Message) == []  # messages are opt-in
    for proto in (1, 2, 3):
        messages = decode_all(cap.peek(proto, messages=True))
        summary = [
            (type(m).__name__,)
            + ((m.transactional, m.prefix, m.content) if isinstance(m, Message) else ())
            for m in messages
            if not isinstance(m, Relation)
        ]
        assert summary == [
            ("Message", False, "otpy", b"outside"),
            ("Message", False, "otpy/nt", b"not transactional"),
            ("Begin",),
            ("Insert",),
            ("Message", True, "otpy/tx", b"\x00\xff"),
            ("Commit",),
            ("Message", False, "otpy", b"survives rollback"),
        ]
        begin = of_type(messages, Begin)[0]
        transactional = [m for m in of_type(messages, Message) if m.transactional]
        assert transactional[0].lsn <= begin.final_lsn
        assert all(m.xid is None for m in of_type(messages, Message))


def test_type_message_announces_user_types(
    capture_factory: CaptureFactory, module_dsn: str
) -> None:
    execute(
        module_dsn,
        "CREATE SCHEMA IF NOT EXISTS other",
        "CREATE TYPE other.mood AS ENUM ('sad', 'ok', 'happy')",
        "CREATE TABLE other.feelings (id int PRIMARY KEY, m other.mood)",
    )
    cap = capture_factory(["other.feelings"])
    execute(module_dsn, "INSERT INTO other.feelings VALUES (1, 'happy')")
    with psycopg.connect(module_dsn) as conn:
        row = conn.execute("SELECT 'other.mood'::regtype::oid").fetchone()
        assert row is not None
        mood_oid = int(row[0])
    for proto, binary in ALL_MODES:
        messages = decode_all(cap.peek(proto, binary=binary))
        assert [type(m) for m in messages] == [Begin, Type, Relation, Insert, Commit]
        assert messages[1] == Type(xid=None, oid=mood_oid, namespace="other", name="mood")
        relation = messages[2]
        assert isinstance(relation, Relation)
        assert (relation.namespace, relation.name) == ("other", "feelings")
        assert relation.columns[1].type_oid == mood_oid


def test_origin_message(capture_factory: CaptureFactory, module_dsn: str) -> None:
    execute(module_dsn, "CREATE TABLE IF NOT EXISTS orig_t (id int PRIMARY KEY)")
    cap = capture_factory(["orig_t"])
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_replication_origin_create('upstream-1')")
        conn.execute("SELECT pg_replication_origin_session_setup('upstream-1')")
        with conn.transaction():
            conn.execute("SELECT pg_replication_origin_xact_setup('0/ABCDEF', now())")
            conn.execute("INSERT INTO orig_t VALUES (1)")
        conn.execute("SELECT pg_replication_origin_session_reset()")
        conn.execute("SELECT pg_replication_origin_drop('upstream-1')")
    for proto in (1, 2, 3):
        messages = decode_all(cap.peek(proto))
        assert [type(m) for m in messages] == [Begin, Origin, Relation, Insert, Commit]
        origin = messages[1]
        assert isinstance(origin, Origin)
        assert origin.name == "upstream-1"
        assert str(origin.commit_lsn) == "0/ABCDEF"


def _streamed_summary(messages: list[PgOutputMessage]) -> list[str]:
    """Collapse repeated data messages so the stream's structure is readable."""
    out: list[str] = []
    for m in messages:
        name = type(m).__name__
        if not out or out[-1] != name or name not in ("Insert", "StreamStart", "StreamStop"):
            out.append(name)
    return out


def test_streamed_transactions_commit_and_abort(
    capture_factory: CaptureFactory, module_dsn: str
) -> None:
    execute(module_dsn, "CREATE TABLE stream_t (id int PRIMARY KEY, v text)")
    cap = capture_factory(["stream_t"])
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(
                "INSERT INTO stream_t SELECT g, md5(g::text) FROM generate_series(1, 3000) g"
            )
            conn.execute("SELECT pg_logical_emit_message(true, 'big', 'in stream')")
            row = conn.execute("SELECT txid_current()").fetchone()
            assert row is not None
            committed_xid = int(row[0]) & 0xFFFFFFFF
        conn.execute("BEGIN")
        conn.execute("INSERT INTO stream_t SELECT g, 'x' FROM generate_series(10001, 13000) g")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO stream_t VALUES (20000, 'kept')")
        conn.execute("SAVEPOINT s1")
        conn.execute("INSERT INTO stream_t SELECT g, 'x' FROM generate_series(20001, 23000) g")
        conn.execute("ROLLBACK TO SAVEPOINT s1")
        conn.execute("COMMIT")

    # Without streaming (protocol 1): the committed ones arrive whole, nothing aborted shows.
    plain = decode_all(cap.peek(1))
    assert len(of_type(plain, Insert)) == 3001
    assert not of_type(plain, StreamStart)

    for proto, binary in [(2, False), (3, True)]:
        messages = decode_all(
            cap.peek(proto, binary=binary, streaming=True, messages=True, work_mem="64kB")
        )
        starts = of_type(messages, StreamStart)
        assert starts[0].first_segment and not any(
            s.first_segment for s in starts[1:] if s.xid == starts[0].xid
        )
        first = starts[0].xid
        assert first == committed_xid
        # Data messages inside a stream block carry the xid of their (sub)transaction.
        decoder = PgOutputDecoder()
        raw_messages = cap.peek(
            proto, binary=binary, streaming=True, messages=True, work_mem="64kB"
        )
        for raw, message in zip(raw_messages, messages, strict=True):
            decoder.decode(raw)
            if isinstance(message, Insert | Relation | Message):
                assert (message.xid is not None) == decoder.in_stream
        committed = [m for m in messages if isinstance(m, Insert) and m.xid == first]
        assert len(committed) == 3000
        commit, savepoint_commit = of_type(messages, StreamCommit)
        assert commit.xid == first and commit.end_lsn > commit.commit_lsn
        kept = [m for m in of_type(messages, Insert) if m.xid == savepoint_commit.xid]
        assert [m.new.values[0] for m in kept] == [b"20000" if not binary else b"\x00\x00N "]
        (message,) = of_type(messages, Message)
        assert (message.xid, message.prefix, message.content) == (first, "big", b"in stream")
        aborts = of_type(messages, StreamAbort)
        # The rolled-back savepoint of a committed transaction: an abort of its subxid.
        (savepoint_abort,) = [a for a in aborts if a.subxid != a.xid]
        assert savepoint_abort.xid == savepoint_commit.xid
        # The rolled-back transaction (xid == subxid): PostgreSQL 15-17 stream it and
        # then abort it; 18 knows it aborted and does not stream it at all.  Either
        # way every streamed transaction ends exactly once, commit or abort.
        whole_aborts = [a.xid for a in aborts if a.subxid == a.xid]
        assert len(whole_aborts) <= 1
        ended = [c.xid for c in of_type(messages, StreamCommit)] + whole_aborts
        assert sorted(ended) == sorted({s.xid for s in starts})
        # The savepoint's rows streamed before the abort went under the subtransaction's
        # xid (what was still in memory at ROLLBACK TO is simply never sent).
        in_savepoint = [m for m in of_type(messages, Insert) if m.xid == savepoint_abort.subxid]
        assert 0 < len(in_savepoint) <= 3000
        summary = _streamed_summary(messages)
        assert summary[:3] == ["StreamStart", "Relation", "Insert"]
        assert summary[-3:] == ["StreamStop", "StreamAbort", "StreamCommit"]
        assert not of_type(messages, Begin)


def test_two_phase_messages(capture_factory: CaptureFactory, twophase_server: Any) -> None:
    dsn = twophase_server.dsn
    execute(dsn, "CREATE TABLE IF NOT EXISTS tp (id int PRIMARY KEY, v text)")
    cap = Capture(dsn, ["tp"], two_phase=True)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for gid, finish, rows in [
                ("small-commit", "COMMIT PREPARED", 1),
                ("small-rollback", "ROLLBACK PREPARED", 1),
                ("big-stream", "COMMIT PREPARED", 3000),
            ]:
                base = {"small-commit": 1, "small-rollback": 100, "big-stream": 1000}[gid]
                conn.execute("BEGIN")
                conn.execute(
                    "INSERT INTO tp SELECT g, md5(g::text)"
                    " FROM generate_series(%s::int, %s::int) g",
                    [base, base + rows - 1],
                )
                conn.execute(f"PREPARE TRANSACTION '{gid}'")
                conn.execute(f"{finish} '{gid}'")
        messages = decode_all(cap.peek(3, two_phase=True, streaming=True, work_mem="64kB"))
        control = [
            type(m).__name__
            for m in messages
            if not isinstance(m, Insert | Relation | StreamStart | StreamStop)
        ]
        assert control == [
            "BeginPrepare", "Prepare", "CommitPrepared",
            "BeginPrepare", "Prepare", "RollbackPrepared",
            "StreamPrepare", "CommitPrepared",
        ]  # fmt: skip
        assert len(of_type(messages, StreamStart)) >= 2
        assert len([m for m in of_type(messages, Insert) if m.xid is not None]) == 3000
        assert len([m for m in of_type(messages, Insert) if m.xid is None]) == 2
        begins = of_type(messages, BeginPrepare)
        prepares = of_type(messages, Prepare)
        commits = of_type(messages, CommitPrepared)
        (rollback,) = of_type(messages, RollbackPrepared)
        (stream_prepare,) = of_type(messages, StreamPrepare)
        assert [b.gid for b in begins] == ["small-commit", "small-rollback"]
        assert [p.gid for p in prepares] == ["small-commit", "small-rollback"]
        assert [c.gid for c in commits] == ["small-commit", "big-stream"]
        assert rollback.gid == "small-rollback" and stream_prepare.gid == "big-stream"
        assert begins[0].xid == prepares[0].xid == commits[0].xid
        assert begins[0].prepare_lsn == prepares[0].prepare_lsn
        assert begins[0].end_lsn == prepares[0].end_lsn
        assert rollback.xid == begins[1].xid
        assert rollback.prepare_end_lsn == prepares[1].end_lsn
        assert rollback.rollback_end_lsn > rollback.prepare_end_lsn
        assert rollback.rollback_time >= rollback.prepare_time
        assert stream_prepare.xid == commits[1].xid
        assert commits[0].commit_lsn > prepares[0].end_lsn - 1
    finally:
        cap.drop()


def test_stream_state_errors() -> None:
    decoder = PgOutputDecoder()
    with pytest.raises(DecodeError, match="Stream Stop outside"):
        decoder.decode(b"E")
    decoder.decode(b"S\x00\x00\x00\x05\x01")
    assert decoder.in_stream and decoder.stream_xid == 5
    with pytest.raises(DecodeError, match="Stream Start inside"):
        decoder.decode(b"S\x00\x00\x00\x06\x01")
    # Inside a stream the xid comes first.
    insert = decoder.decode(b"I\x00\x00\x00\x05\x00\x00\x40\x00N\x00\x01n")
    assert insert == Insert(xid=5, relation_oid=0x4000, new=insert.new)  # type: ignore[union-attr]
    decoder.reset()
    assert not decoder.in_stream and decoder.stream_xid is None


# --------------------------------------------------------------------------- protocol 4

EVERY_KIND = {cls.__name__ for cls in typing.get_args(PgOutputMessage)}


@pytest.mark.requires("pg16")
def test_protocol_4_decodes_every_message_kind_and_the_long_stream_abort(
    twophase_server: PostgresServer,
) -> None:
    from make_golden_data import changes, workload  # the golden streams' workload

    dsn = create_database(twophase_server.dsn, "t_proto4")
    try:
        workload(dsn)
        cap = Capture(dsn, ["g", "g_full"], two_phase=True)
        changes(dsn)
        options: dict[str, Any] = dict(two_phase=True, messages=True, work_mem="64kB")
        for binary in (False, True):
            parallel = decode_all(cap.peek(4, binary=binary, streaming="parallel", **options))
            assert {type(m).__name__ for m in parallel} == EVERY_KIND
            aborts = of_type(parallel, StreamAbort)
            assert aborts
            for abort in aborts:
                # Parallel streaming: where and when the (sub)transaction aborted.
                assert abort.abort_lsn is not None and abort.abort_time is not None
                commit = [c for c in of_type(parallel, StreamCommit) if c.xid == abort.xid]
                for c in commit:  # a savepoint's abort precedes its transaction's commit
                    assert abort.abort_lsn <= c.commit_lsn
                    assert abort.abort_time <= c.commit_time
                assert abs(datetime.now(UTC) - abort.abort_time) < timedelta(minutes=10)
            # Protocol 4 with streaming = on: the same aborts, in the short form.
            on = decode_all(cap.peek(4, binary=binary, streaming=True, **options))
            assert of_type(on, StreamAbort) == [StreamAbort(a.xid, a.subxid) for a in aborts]
        cap.drop()
    finally:
        with psycopg.connect(twophase_server.dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin "
                "WHERE roname = 'golden-origin'"
            )
        drop_database(twophase_server.dsn, "t_proto4")


def test_stream_abort_has_a_short_and_a_long_form() -> None:
    short = b"A" + struct.pack(">II", 7, 8)
    assert decode_message(short) == StreamAbort(7, 8)
    assert encode_message(StreamAbort(7, 8)) == short
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    long = short + struct.pack(">Qq", 0x1_0000_0010, datetime_to_pg_timestamp(when))
    assert len(long) == 25  # protocol 4, streaming = parallel
    message = decode_message(long)
    assert message == StreamAbort(7, 8, LSN(0x1_0000_0010), when)
    assert encode_message(message) == long
    # The stateful decoder takes it outside a stream block, where the server sends it.
    assert PgOutputDecoder().decode(long) == message


def test_a_malformed_stream_abort_is_a_decode_error() -> None:
    long = encode_message(StreamAbort(7, 8, LSN(16), datetime(2026, 1, 1, tzinfo=UTC)))
    for cut in range(1, len(long)):
        if cut == 9:
            continue  # the short form
        with pytest.raises(DecodeError, match="Stream Abort") as info:
            decode_message(long[:cut])
        assert info.value.offset == 1
    with pytest.raises(DecodeError, match="unexpected bytes after Stream Abort"):
        decode_message(long + b"\0")
    with pytest.raises(ValueError, match="go together"):
        encode_message(StreamAbort(7, 8, LSN(16), None))
