"""The mypyc-compiled pgoutput decoder against its own interpreted source.

Installing otpy compiles ``pgoutput.py`` with mypyc when it can (``setup.py``);
without a C compiler the same source runs interpreted.  The rest of the suite
tests whichever module the install produced; these tests make sure the two
can never drift apart: every input, valid or not, must give the same message
(by ``repr``, which shows every field) or the same DecodeError at the same
offset.  Inputs are the stored real streams, every message kind from the
encoder, and both mutated.  (Results are compared for well-typed calls: the
compiled module also checks argument types at run time.)
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pgoutput_strategies import in_stream_for, messages, mutate

from otpy.pg.replication import DecodeError, PgOutputMessage, encode_message, pgoutput
from otpy.pg.testing import interpreted_module

DATA = Path(__file__).resolve().parent / "data"
CORPUS = [
    bytes.fromhex(line) for path in sorted(DATA.glob("*.hex")) for line in path.read_text().split()
]

compiled_only = pytest.mark.skipif(
    not pgoutput.is_compiled(), reason="the decoder is not compiled: nothing to compare"
)


@pytest.fixture(scope="module")
def interpreted() -> ModuleType:
    return interpreted_module("otpy.pg.replication.pgoutput")


def outcome(module: ModuleType, raw: bytes, in_stream: bool) -> tuple[str, str, int]:
    """What decoding ``raw`` gives: the message's type and repr, or the error and its offset."""
    try:
        message = module.decode_message(raw, in_stream=in_stream)
    except DecodeError as exc:
        return ("DecodeError", str(exc), exc.offset)
    return (type(message).__name__, repr(message), -1)


def assert_same(interpreted: ModuleType, raw: bytes, in_stream: bool) -> None:
    assert outcome(pgoutput, raw, in_stream) == outcome(interpreted, raw, in_stream), (
        f"{raw.hex()}: compiled and interpreted differ (edited pgoutput.py without "
        "rebuilding? `pip install -e .`, or scripts/test.sh, rebuilds it)"
    )


@pytest.mark.skipif(not os.environ.get("OTPY_EXPECT_COMPILED"), reason="OTPY_EXPECT_COMPILED unset")
def test_decoder_is_compiled_where_expected() -> None:
    # CI sets OTPY_EXPECT_COMPILED: a build that silently fell back to the
    # interpreter would pass every other test and only be slower.
    assert pgoutput.is_compiled(), "setup.py did not compile otpy/pg/replication/pgoutput.py"


def test_interpreted_copy_is_the_source(interpreted: ModuleType) -> None:
    assert not interpreted.is_compiled()
    assert interpreted.__file__ is not None
    assert Path(interpreted.__file__).name == "pgoutput.py"


@compiled_only
def test_real_streams_decode_the_same(interpreted: ModuleType) -> None:
    assert len(CORPUS) > 100
    in_stream = False
    for raw in CORPUS:
        in_stream = (in_stream or raw[:1] == b"S") and raw[:1] != b"E"
        flag = in_stream and raw[:1] not in (b"S", b"E")
        assert outcome(pgoutput, raw, flag)[0] != "DecodeError"
        assert_same(interpreted, raw, flag)
        for cut in range(0, len(raw), 3):
            assert_same(interpreted, raw[:cut], flag)


@compiled_only
@settings(max_examples=500)
@given(messages)
def test_every_message_kind_decodes_the_same(
    interpreted: ModuleType, message: PgOutputMessage
) -> None:
    assert_same(interpreted, encode_message(message), in_stream_for(message))


@compiled_only
@settings(max_examples=1000)
@given(st.data(), st.booleans())
def test_mutated_real_messages_fail_the_same(
    interpreted: ModuleType, data: st.DataObject, in_stream: bool
) -> None:
    assert_same(interpreted, mutate(data, data.draw(st.sampled_from(CORPUS))), in_stream)


@compiled_only
@settings(max_examples=300)
@given(messages, st.data())
def test_mutated_encoded_messages_fail_the_same(
    interpreted: ModuleType, message: PgOutputMessage, data: st.DataObject
) -> None:
    assert_same(interpreted, mutate(data, encode_message(message)), in_stream_for(message))
