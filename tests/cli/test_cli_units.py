"""The command line's pure parts, without a server: error mapping, secrets, slot names."""

from __future__ import annotations

import psycopg
import pytest

from otpy.cli.errors import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_NOPERM,
    EXIT_NOT_FOUND,
    EXIT_OUTPUT_CLOSED,
    EXIT_SOFTWARE,
    EXIT_UNAVAILABLE,
    explain,
    redact,
    secrets_of,
)
from otpy.cli.slots import server_slot_columns
from otpy.cli.tail import persistent_slot_name
from otpy.errors import ApplicationStartError, InitError
from otpy.exit_reason import ExitReason
from otpy.pg.errors import ConnectError
from otpy.pg.pool.errors import PoolTimeout
from otpy.pg.replication.errors import PublicationMissing, SlotInUse
from otpy.pg.wal_reader.slots import validate_slot_name


def test_explain_finds_the_error_inside_groups_and_start_wrappers() -> None:
    missing = PublicationMissing(["p"], "db")
    wrapped = ApplicationStartError("app", InitError("server", ExitReason.crashed(missing)))
    assert explain(ExceptionGroup("nursery", [wrapped])).code == EXIT_NOT_FOUND
    assert explain(BaseExceptionGroup("x", [KeyboardInterrupt()])).code == EXIT_INTERRUPTED


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (SlotInUse("s", 42), EXIT_UNAVAILABLE),
        (PoolTimeout("no connection within 5 s", "main", 5.0, 2, 3), EXIT_UNAVAILABLE),
        (ConnectError("could not connect: Connection refused"), EXIT_UNAVAILABLE),
        (ConnectError('FATAL: password authentication failed for user "a"'), EXIT_NOPERM),
        (ConnectError("FATAL: must be superuser or replication role"), EXIT_NOPERM),
        (
            psycopg.errors.ObjectNotInPrerequisiteState(
                "logical decoding requires wal_level >= logical"
            ),
            EXIT_CONFIG,
        ),
        (BrokenPipeError(), EXIT_OUTPUT_CLOSED),
    ],
)
def test_explain_gives_each_expected_failure_its_code(error: BaseException, code: int) -> None:
    failure = explain(error)
    assert failure.code == code and failure.expected
    assert failure.message is None or "\n" not in failure.message


def test_an_unknown_error_is_a_bug_with_a_hint_to_debug() -> None:
    failure = explain(ZeroDivisionError("division by zero"))
    assert failure.code == EXIT_SOFTWARE and not failure.expected
    assert failure.message is not None and "--debug" in failure.message


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://user:s3cr%40t@host/db",
        "postgresql://user:s3cr@t@[host:5432/db",
        "host=h password=s3cr@t",
        "host=h password='s3cr@t' port",
    ],
)
def test_secrets_are_found_even_in_a_malformed_dsn(dsn: str) -> None:
    text = redact(f"error in {dsn!r}: bad", secrets_of(dsn))
    assert "s3cr" not in text and "***" in text


def test_short_secrets_are_redacted_only_as_whole_words() -> None:
    assert redact("password pw is wrong", ["pw"]) == "password *** is wrong"


def test_the_persistent_slot_name_is_stable_valid_and_distinct() -> None:
    assert persistent_slot_name(["orders", "items"]) == "otpy_tail_items_orders"
    assert persistent_slot_name(["items", "orders"]) == persistent_slot_name(["orders", "items"])
    odd = [persistent_slot_name(["Items"]), persistent_slot_name(["items-x"])]
    long = persistent_slot_name(["p" * 60, "q" * 60])
    for name in [*odd, long]:
        assert validate_slot_name(name) == name
    assert persistent_slot_name(["Items"]) != persistent_slot_name(["items"])
    assert long != persistent_slot_name(["p" * 60, "q" * 59])


def test_slot_columns_follow_the_server_version() -> None:
    assert server_slot_columns(160004) == ()
    assert set(server_slot_columns(170000)) == {"failover", "synced", "invalidation_reason"}
