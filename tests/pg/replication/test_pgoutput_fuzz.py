"""Property tests of the pgoutput decoder: round trips and hostile input.

* every message the encoder can produce decodes back to itself;
* arbitrary bytes, and real captured messages that are mutated, truncated or
  extended, only ever raise :class:`DecodeError` (never IndexError,
  struct.error, UnicodeDecodeError, OverflowError...), and never hang.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pgcapture import Capture, execute
from pgoutput_strategies import in_stream_for, messages, mutate

from otpy.pg.replication import DecodeError, PgOutputMessage, decode_message, encode_message
from otpy.pg.replication.pgoutput import StreamAbort


@given(messages)
def test_encode_decode_round_trip(message: PgOutputMessage) -> None:
    raw = encode_message(message)
    decoded = decode_message(raw, in_stream=in_stream_for(message))
    assert decoded == message
    assert hash(decoded) == hash(message)
    assert decode_message(bytearray(raw), in_stream=in_stream_for(message)) == message


def decode_or_decode_error(raw: bytes, in_stream: bool) -> None:
    try:
        decode_message(raw, in_stream=in_stream)
    except DecodeError as exc:
        assert 0 <= exc.offset <= len(raw)


@settings(max_examples=500)
@given(st.binary(max_size=80), st.booleans())
def test_arbitrary_bytes_only_raise_decode_error(raw: bytes, in_stream: bool) -> None:
    decode_or_decode_error(raw, in_stream)


@settings(max_examples=500)
@given(st.sampled_from(b"BCORYIUDTMSEcAbPKrp"), st.binary(max_size=80), st.booleans())
def test_known_types_with_garbage_only_raise_decode_error(
    kind: int, body: bytes, in_stream: bool
) -> None:
    decode_or_decode_error(bytes([kind]) + body, in_stream)


@given(messages, st.data())
def test_truncated_and_extended_messages_raise_decode_error(
    message: PgOutputMessage, data: st.DataObject
) -> None:
    raw = encode_message(message)
    in_stream = in_stream_for(message)
    cut = data.draw(st.integers(0, len(raw) - 1))
    if isinstance(message, StreamAbort) and message.abort_lsn is not None and cut == 9:
        # Cut after xid and subxid, protocol 4's Stream Abort *is* the older form,
        # which the decoder must accept (it is not told the protocol version).
        assert decode_message(raw[:cut], in_stream=in_stream) == StreamAbort(
            message.xid, message.subxid
        )
    else:
        with pytest.raises(DecodeError):
            decode_message(raw[:cut], in_stream=in_stream)
    with pytest.raises(DecodeError):
        decode_message(raw + data.draw(st.binary(min_size=1, max_size=8)), in_stream=in_stream)


def test_specific_errors_carry_offsets() -> None:
    cases = {
        b"": 0,
        b"Z": 0,
        b"I\x00\x00\x40\x00X\x00\x00": 5,  # 'X' instead of 'N'
        b"I\x00\x00\x40\x00N\x00\x01t\xff\xff\xff\xff": 9,  # negative length
        b"I\x00\x00\x40\x00N\x00\x01t\x00\x00\x00\x09abc": 9,  # length beyond the end
        b"I\x00\x00\x40\x00N\x00\x02n": 9,  # a column missing
        b"I\x00\x00\x40\x00N\x00\x01q": 8,  # unknown column kind
        b"Y\x00\x00\x00\x01ab\xffc\x00x\x00": 7,  # invalid UTF-8
        b"Y\x00\x00\x00\x01abc": 5,  # unterminated string
        b"B" + bytes(8) + (2**63 - 1).to_bytes(8, "big") + bytes(4): 9,  # time out of range
        b"T\x00\x00\x00\x02\x00\x00\x00\x00\x01": 6,  # 2 OIDs announced, 1 present
    }
    for raw, offset in cases.items():
        with pytest.raises(DecodeError) as info:
            decode_message(raw)
        assert info.value.offset == offset, (raw, info.value)


@pytest.fixture(scope="module")
def real_messages(module_dsn: str) -> list[tuple[bytes, bool]]:
    """A varied real stream (protocol 2, binary, streaming) with each message's stream flag."""
    execute(
        module_dsn,
        "CREATE TYPE fz_mood AS ENUM ('a', 'b')",
        "CREATE TABLE fz (id int PRIMARY KEY, t text, j jsonb, m fz_mood, a int[])",
    )
    cap = Capture(module_dsn, ["fz"])
    try:
        execute(
            module_dsn,
            "INSERT INTO fz VALUES (1, 'x', '{\"k\": 1}', 'a', '{1,2}'),"
            " (2, NULL, NULL, NULL, NULL)",
            "UPDATE fz SET t = 'y' WHERE id = 1",
            "DELETE FROM fz WHERE id = 2",
            "SELECT pg_logical_emit_message(false, 'p', 'c')",
            "INSERT INTO fz SELECT g, md5(g::text) FROM generate_series(10, 2000) g",
            "TRUNCATE fz",
        )
        out: list[tuple[bytes, bool]] = []
        for options in (
            {"binary": False},
            {"binary": True, "messages": True, "streaming": True, "work_mem": "64kB"},
        ):
            in_stream = False
            for raw in cap.peek(2, **options):  # type: ignore[arg-type]
                kind = raw[:1]
                if kind == b"S":
                    in_stream = True
                elif kind == b"E":
                    in_stream = False
                if kind != b"I" or len(out) % 50 == 0:  # keep a sample of the inserts
                    out.append((raw, in_stream and kind not in (b"S", b"E")))
        return out
    finally:
        cap.drop()


def test_real_messages_truncated_at_every_offset(real_messages: list[tuple[bytes, bool]]) -> None:
    assert len(real_messages) > 20
    for raw, in_stream in real_messages:
        decode_message(raw, in_stream=in_stream)
        for cut in range(len(raw)):
            with pytest.raises(DecodeError):
                decode_message(raw[:cut], in_stream=in_stream)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_real_messages_only_raise_decode_error(
    real_messages: list[tuple[bytes, bool]], data: st.DataObject
) -> None:
    raw, in_stream = data.draw(st.sampled_from(real_messages))
    mutated = mutate(data, raw)
    decode_or_decode_error(mutated, in_stream)
    decode_or_decode_error(mutated, not in_stream)


def test_huge_counts_do_not_hang() -> None:
    # 65535 columns announced, none present: fails at once instead of looping.
    start = datetime.now(UTC)
    with pytest.raises(DecodeError):
        decode_message(b"I\x00\x00\x40\x00N\xff\xff")
    with pytest.raises(DecodeError):
        decode_message(b"R\x00\x00\x40\x00s\x00t\x00d\xff\xff")
    with pytest.raises(DecodeError):
        decode_message(b"T\xff\xff\xff\xff\x00")
    assert datetime.now(UTC) - start < timedelta(seconds=1)
