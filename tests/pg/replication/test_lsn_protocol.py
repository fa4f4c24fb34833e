"""LSN, protocol timestamps and COPY_BOTH framing."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otpy.pg.replication import (
    LSN,
    Begin,
    Commit,
    DecodeError,
    PrimaryKeepalive,
    StandbyStatusUpdate,
    XLogData,
    datetime_to_pg_timestamp,
    decode_copy_data,
    decode_message,
    encode_keepalive,
    encode_message,
    encode_standby_status,
    encode_xlogdata,
    now_pg_timestamp,
    pg_timestamp_to_datetime,
)
from otpy.pg.replication.lsn import lsn_from_u64

U64 = st.integers(0, 2**64 - 1)
# Timestamps datetime can represent (years 1..9999).
PG_TS = st.integers(-63082281600 * 10**6, 252455615999 * 10**6)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("0/1A2B", 0x1A2B),  # the original parsed a short low half wrongly
        ("0/1a2b", 0x1A2B),
        ("16/B374D848", (0x16 << 32) | 0xB374D848),
        ("1/0", 1 << 32),
        ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
    ],
)
def test_lsn_parse(text: str, value: int) -> None:
    lsn = LSN.parse(text)
    assert lsn == value and LSN(text) == value
    assert str(lsn) == text.upper()
    assert repr(lsn) == f"LSN('{text.upper()}')"
    assert f"{lsn}" == text.upper()
    assert f"{lsn:>20}" == text.upper().rjust(20)
    assert f"{lsn:x}" == format(value, "x")


@pytest.mark.parametrize(
    "text", ["", "0", "/", "0/", "/1", "1/2/3", "G/0", "0/123456789", "-1/0", "0/+1", "0x1/0"]
)
def test_lsn_rejects(text: str) -> None:
    with pytest.raises(DecodeError):
        LSN.parse(text)


def test_lsn_range_and_arithmetic() -> None:
    with pytest.raises(DecodeError):
        LSN(-1)
    with pytest.raises(DecodeError):
        LSN(2**64)
    a, b = LSN("0/100"), LSN("0/40")
    lag = a - b
    assert lag == 0xC0 and type(lag) is int
    assert type(a + 1) is LSN and a + 1 == 0x101
    assert type(1 + a) is LSN
    assert type(a - 1) is LSN and str(a - 1) == "0/FF"
    assert sorted([a, b, LSN(0)]) == [0, b, a]
    assert {a: 1}[LSN("0/100")] == 1 and hash(a) == hash(0x100)
    with pytest.raises(DecodeError):
        b - 0x41


@given(U64)
def test_lsn_text_round_trip(value: int) -> None:
    lsn = LSN(value)
    assert LSN.parse(str(lsn)) == lsn
    high, low = str(lsn).split("/")
    assert int(high, 16) == value >> 32 and int(low, 16) == value & 0xFFFFFFFF


@given(U64, U64)
def test_lsn_order_is_numeric(a: int, b: int) -> None:
    assert (LSN(a) < LSN(b)) == (a < b)
    assert LSN(a) - LSN(b) == a - b


def test_timestamps() -> None:
    assert pg_timestamp_to_datetime(0) == datetime(2000, 1, 1, tzinfo=UTC)
    assert pg_timestamp_to_datetime(-1) == datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    ist = timezone(timedelta(hours=5, minutes=30))
    assert datetime_to_pg_timestamp(datetime(2000, 1, 1, 5, 30, tzinfo=ist)) == 0
    with pytest.raises(ValueError, match="naive"):
        datetime_to_pg_timestamp(datetime(2000, 1, 1))
    now = datetime.now(UTC)
    assert abs(pg_timestamp_to_datetime(now_pg_timestamp()) - now) < timedelta(seconds=5)


@given(PG_TS)
def test_timestamp_round_trip(us: int) -> None:
    moment = pg_timestamp_to_datetime(us)
    assert moment.tzinfo is UTC
    assert datetime_to_pg_timestamp(moment) == us


def test_xlogdata_and_keepalive() -> None:
    raw = encode_xlogdata(0x10, (1 << 32) | 5, 1_000_000, b"B payload")
    assert len(raw) == 25 + 9
    assert decode_copy_data(raw) == XLogData(
        LSN("0/10"), LSN("1/5"), datetime(2000, 1, 1, 0, 0, 1, tzinfo=UTC), b"B payload"
    )
    assert decode_copy_data(memoryview(raw)) == decode_copy_data(bytearray(raw))
    keepalive = encode_keepalive(0x20, 0, True)
    assert keepalive == b"k" + (0x20).to_bytes(8, "big") + bytes(8) + b"\x01"
    assert decode_copy_data(keepalive) == PrimaryKeepalive(
        LSN("0/20"), datetime(2000, 1, 1, tzinfo=UTC), True
    )
    assert decode_copy_data(encode_keepalive(0, 0, False)).reply_requested is False  # type: ignore[union-attr]


def test_standby_status_update_layout() -> None:
    raw = encode_standby_status(1, 2, 3, time=4, reply_requested=True)
    assert raw == (
        b"r"
        + (1).to_bytes(8, "big")
        + (2).to_bytes(8, "big")
        + (3).to_bytes(8, "big")
        + (4).to_bytes(8, "big")
        + b"\x01"
    )
    assert len(raw) == 34
    default_time = int.from_bytes(encode_standby_status(0, 0, 0)[25:33], "big")
    assert abs(default_time - now_pg_timestamp()) < 5_000_000
    assert encode_standby_status(0, 0, 0, time=0)[-1] == 0
    update = StandbyStatusUpdate(LSN(1), LSN(2), LSN(3), 4, True)
    assert update.encode() == raw


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"x",
        b"w",
        b"w" + bytes(23),
        b"k" + bytes(16),
        b"k" + bytes(18),
        b"k" + bytes(8) + (2**63 - 1).to_bytes(8, "big") + b"\x00",  # time out of range
    ],
)
def test_framing_errors(raw: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_copy_data(raw)
    assert info.value.offset >= 0
    assert "offset" in str(info.value)


@given(st.binary(max_size=64))
def test_framing_arbitrary_bytes_only_raise_decode_error(raw: bytes) -> None:
    try:
        message = decode_copy_data(raw)
    except DecodeError:
        return
    assert isinstance(message, XLogData | PrimaryKeepalive)


@given(U64, U64, PG_TS, st.binary(max_size=100), st.booleans())
def test_framing_round_trip(start: int, end: int, ts: int, payload: bytes, reply: bool) -> None:
    xlog = decode_copy_data(encode_xlogdata(start, end, ts, payload))
    assert isinstance(xlog, XLogData)
    assert (xlog.start, xlog.end, datetime_to_pg_timestamp(xlog.send_time), xlog.payload) == (
        start,
        end,
        ts,
        payload,
    )
    keepalive = decode_copy_data(encode_keepalive(end, ts, reply))
    assert keepalive == PrimaryKeepalive(LSN(end), pg_timestamp_to_datetime(ts), reply)


@given(U64, U64, PG_TS, st.integers(0, 2**32 - 1), st.integers(0, 255))
def test_begin_and_commit_are_the_constructors_objects(
    lsn: int, end: int, ts: int, xid: int, flags: int
) -> None:
    # The decoder fills Begin/Commit through their slots and builds LSNs without
    # LSN.__new__'s checks (lsn_from_u64): the same objects the constructors make.
    moment = pg_timestamp_to_datetime(ts)
    for message in (Begin(LSN(lsn), moment, xid), Commit(flags, LSN(lsn), LSN(end), moment)):
        decoded = decode_message(encode_message(message))
        assert type(decoded) is type(message)
        assert decoded == message
        assert hash(decoded) == hash(message)
        assert repr(decoded) == repr(message)
        for name in ("final_lsn", "commit_lsn", "end_lsn"):
            if hasattr(decoded, name):
                assert type(getattr(decoded, name)) is LSN
        assert decoded.commit_time.tzinfo is UTC


@pytest.mark.parametrize("ts", [2**63 - 1, -(2**63)])
def test_begin_and_commit_times_out_of_range_are_decode_errors(ts: int) -> None:
    begin = b"B" + struct.pack(">QqI", 1, ts, 7)
    commit = b"C" + struct.pack(">BQQq", 0, 1, 2, ts)
    with pytest.raises(DecodeError, match="out of range") as caught:
        decode_message(begin)
    assert caught.value.offset == 9
    with pytest.raises(DecodeError, match="out of range") as caught:
        decode_message(commit)
    assert caught.value.offset == 18


@given(U64)
def test_lsn_from_u64_is_lsn(value: int) -> None:
    assert lsn_from_u64(LSN, value) == LSN(value)
    assert type(lsn_from_u64(LSN, value)) is LSN
    assert str(lsn_from_u64(LSN, value)) == str(LSN(value))
