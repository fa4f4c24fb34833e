"""No silent loss, no wedged start: handlers, lost slots, option checks, start timeouts.

Each test fails without the guarantee it names: a handler that cannot see
changes is refused, a persistent slot that disappears ends the subscription
(never re-created behind the reader's back, never a restart loop), every
reader option is checked by type and range, and a start that hangs ends in a
clear error within ``connect_timeout``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import trio
from wr_helpers import Recorder, execute, published_table, query, unique

from otpy import ExitReason, Ref, count_children
from otpy.pg import wal_reader
from otpy.pg.connection import TrioConnection
from otpy.pg.errors import ConnectTimeoutError
from otpy.pg.wal_reader import (
    ChangeBatch,
    InvalidHandler,
    InvalidName,
    InvalidOptions,
    ReaderOptions,
    ReaderStartTimeout,
    ReplicationHandler,
    SlotLost,
    StreamEnded,
)


@pytest.fixture(scope="module")
def hz(module_dsn: str) -> str:
    return published_table(module_dsn, "hz", "id int PRIMARY KEY")


class StopRecorder(Recorder):
    """Also records, at each stop, the subscription's error and the stopping actor."""

    def __init__(self) -> None:
        super().__init__()
        self.stop_errors: list[Any] = []
        self.stopping: list[Ref | None] = []

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        self.stop_errors.append(ref.error)
        self.stopping.append(ref.reader())
        await super().handle_replication_stop(ref, slot_name)


# --------------------------------------------------------------------------- handlers


async def test_a_subclass_with_a_misspelled_data_method_is_refused(
    module_dsn: str, hz: str, readers: Ref
) -> None:
    class Misspelled(ReplicationHandler):
        async def handle_replicaton_data(self, ref: Any, changes: ChangeBatch) -> None:
            """The typo: the base class must not acknowledge in its place."""

    slot = unique("typo")
    with pytest.raises(InvalidHandler, match="handle_replication_data"):
        await wal_reader.subscribe(Misspelled(), module_dsn, slot, [hz])
    assert (await count_children(readers)).specs == 0
    assert (
        await query(module_dsn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot])
        == []
    )


def test_the_base_class_does_not_acknowledge_silently() -> None:
    with pytest.raises(NotImplementedError):
        trio.run(ReplicationHandler().handle_replication_data, None, [])  # type: ignore[arg-type]


def test_a_sync_handler_method_is_refused_when_the_class_is_defined() -> None:
    with pytest.raises(InvalidHandler, match=r"handle_replication_data must be a coroutine"):

        class Sync(ReplicationHandler):
            def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:  # type: ignore[override]
                pass

    with pytest.raises(TypeError):  # InvalidHandler is a TypeError

        class SyncStop(ReplicationHandler):
            async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
                pass

            def handle_replication_stop(self, ref: Any, slot_name: str) -> None:  # type: ignore[override]
                pass


class Plain:
    """A duck-typed handler: no base class, both methods async."""

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.stops = 0
        self.got = trio.Event()

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        self.rows += [c.data for c in changes]
        self.got.set()

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        self.stops += 1


async def test_a_plain_object_handler_needs_both_methods_as_coroutines(
    module_dsn: str, hz: str, readers: Ref
) -> None:
    class DataOnly:
        async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
            pass

    class SyncData:
        def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
            pass

        async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
            pass

    slot = unique("plain")
    with pytest.raises(InvalidHandler, match="handle_replication_stop"):
        await wal_reader.subscribe(DataOnly(), module_dsn, slot, [hz])  # type: ignore[arg-type]
    with pytest.raises(InvalidHandler, match="handle_replication_data must be a coroutine"):
        await wal_reader.subscribe(SyncData(), module_dsn, slot, [hz])  # type: ignore[arg-type]
    assert (await count_children(readers)).specs == 0

    handler = Plain()
    ref = await wal_reader.subscribe(handler, module_dsn, slot, [hz])
    try:
        await execute(module_dsn, "INSERT INTO hz VALUES (1)")
        with trio.fail_after(15):
            await handler.got.wait()
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(module_dsn, "DELETE FROM hz")
    assert handler.rows == [{"id": 1}] and handler.stops == 1
    # After unsubscribe the subscription has ended, without a terminal error.
    with trio.fail_after(5):
        assert await ref.wait_stopped() is None
    with pytest.raises(StreamEnded):
        await ref.wait_streaming()


# --------------------------------------------------------------------------- lost slots


async def _kill_and_drop(dsn: str, slot: str) -> None:
    """Terminate the slot's walsender and drop the slot before the reader gets it back."""
    assert slot.replace("_", "").isalnum()
    await execute(
        dsn,
        f"""DO $$ BEGIN
          FOR i IN 1..500 LOOP
            PERFORM pg_terminate_backend(active_pid) FROM pg_replication_slots
              WHERE slot_name = '{slot}' AND active_pid IS NOT NULL;
            BEGIN
              PERFORM pg_drop_replication_slot('{slot}');
              RETURN;
            EXCEPTION WHEN object_in_use THEN
              PERFORM pg_sleep(0.01);
            END;
          END LOOP;
          RAISE EXCEPTION 'slot % stayed active', '{slot}';
        END $$""",
    )


async def test_a_dropped_persistent_slot_ends_the_subscription_and_is_not_recreated(
    module_dsn: str, hz: str, readers: Ref, caplog: pytest.LogCaptureFixture
) -> None:
    rec = StopRecorder()
    slot = unique("lost")
    ref = await wal_reader.subscribe(
        rec,
        module_dsn,
        slot,
        [hz],
        {"slot_type": "persistent", "restart_backoff": {"initial": 1.0, "maximum": 1.0}},
    )
    try:
        await execute(module_dsn, "INSERT INTO hz VALUES (10)")
        await rec.wait_changes(1)
        with caplog.at_level(logging.ERROR, logger="otpy.pg.wal_reader"):
            await _kill_and_drop(module_dsn, slot)
            with trio.fail_after(15):
                error = await ref.wait_stopped()
        assert isinstance(error, SlotLost) and ref.error is error
        # One stop for the killed stream, one (terminal, with the error) for the end.
        # One ordinary stop per stream that ended (the killed one, and one more only
        # if a restart won a race for the slot), then one terminal stop with the error.
        *ordinary, terminal = rec.stop_errors
        assert terminal is error and ordinary == [None] * ref.state.starts
        # The last incarnation exited with a shutdown reason: TRANSIENT, so not restarted.
        last = rec.stopping[-1]
        assert last is not None
        with trio.fail_after(5):
            reason = await last.wait()
        assert reason == ExitReason.shutdown(error) and not reason.abnormal
        assert ref.state.starts in (1, 2)
        # Never re-created behind the reader's back.
        rows = await query(
            module_dsn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot]
        )
        assert rows == []
        with pytest.raises(SlotLost):
            await ref.wait_streaming(2)
        # The log says what happened and what to do.
        logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any("no longer exists" in m and "Resynchronise" in m for m in logged), logged
        # The subscription is gone: subscribing again (an explicit decision) creates the slot.
        rec2 = Recorder()
        ref2 = await wal_reader.subscribe(rec2, module_dsn, slot, [hz], {"slot_type": "persistent"})
        try:
            await execute(module_dsn, "INSERT INTO hz VALUES (11)")
            assert (await rec2.wait_changes(1))[0].data == {"id": 11}
        finally:
            await wal_reader.unsubscribe(ref2)
    finally:
        await wal_reader.unsubscribe(ref)
        await execute(
            module_dsn,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            f"WHERE slot_name = '{slot}'",
            "DELETE FROM hz",
        )


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("binary", "false"),
        ("messages", 1),
        ("streaming", None),
        ("standby", "yes"),
        ("status_interval", math.nan),
        ("status_interval", math.inf),
        ("status_interval", -1),
        ("status_interval", "10"),
        ("status_interval", True),
        ("shutdown_timeout", math.inf),
        ("shutdown_timeout", math.nan),
        ("connect_timeout", 0),
        ("connect_timeout", math.nan),
        ("queue_size", 2.5),
        ("queue_size", -3),
        ("max_batch_size", math.inf),
        ("max_batch_size", "100"),
        ("proto_version", "2"),
        ("proto_version", True),
        ("proto_version", 0),
        ("proto_version", 5),
        ("slot_type", "Persistent"),
        ("slot_type", None),
        ("create_publication", "yes"),
        ("create_publication", ["t", 3]),
        ("create_publication", []),
        ("restart_backoff", {"initial": math.nan}),
        ("restart_backoff", {"maximum": math.inf}),
        ("restart_backoff", {"initial": 0.1, "multiplier": math.nan}),
        ("restart_backoff", {"reset_after": -1.0}),
        ("restart_backoff", 5),
    ],
)
def test_a_bad_option_value_is_refused_naming_the_option_and_value(option: str, value: Any) -> None:
    with pytest.raises(InvalidOptions, match=option) as info:
        ReaderOptions.coerce({option: value})
    if isinstance(value, dict):  # the message names the field of the backoff
        assert any(field in str(info.value) for field in value)
    else:
        assert repr(value) in str(info.value)


def test_good_option_values_are_kept() -> None:
    opts = ReaderOptions.coerce(
        {
            "binary": True,
            "status_interval": 2,
            "connect_timeout": 0.5,
            "proto_version": 4,
            "max_batch_size": None,
            "create_publication": ["a", "s.b"],
            "restart_backoff": {"initial": 0, "maximum": 1, "reset_after": 3},
        }
    )
    assert opts.binary and opts.status_interval == 2 and opts.connect_timeout == 0.5
    assert opts.create_publication == ("a", "s.b") and opts.proto_version == 4


async def test_subscribe_checks_its_other_arguments(module_dsn: str, hz: str, readers: Ref) -> None:
    for bad in (None, 5, b"hz_pub", [1], [hz, None]):
        with pytest.raises(InvalidName):
            await wal_reader.subscribe(Recorder(), module_dsn, unique("args"), bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidName):
        await wal_reader.subscribe(Recorder(), module_dsn, 42, [hz])  # type: ignore[arg-type]
    assert (await count_children(readers)).specs == 0


async def test_a_protocol_the_server_does_not_speak_is_refused_at_subscribe(
    module_dsn: str, hz: str, readers: Ref
) -> None:
    rows = await query(module_dsn, "SELECT current_setting('server_version_num')::int")
    if rows[0][0] >= 160000:
        pytest.skip("the server speaks pgoutput protocol 4")
    slot = unique("proto")
    with pytest.raises(
        InvalidOptions, match=r"proto_version: pgoutput protocol 4 needs PostgreSQL 16"
    ):
        await wal_reader.subscribe(Recorder(), module_dsn, slot, [hz], {"proto_version": 4})
    assert (await count_children(readers)).specs == 0
    assert (
        await query(module_dsn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot])
        == []
    )


# --------------------------------------------------------------------------- start timeouts


async def test_a_server_that_never_answers_ends_the_start_within_connect_timeout(
    hz: str, readers: Ref
) -> None:
    # A listening loopback socket nobody reads: the TCP handshake succeeds, the
    # startup packet is never answered.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        with trio.fail_after(10):
            with pytest.raises(ReaderStartTimeout, match="still connecting") as info:
                await wal_reader.subscribe(
                    Recorder(),
                    f"host=127.0.0.1 port={port} dbname=x user=x",
                    unique("silent"),
                    [hz],
                    {"connect_timeout": 0.5},
                )
        assert info.value.phase == "connecting" and info.value.timeout == 0.5
        assert isinstance(info.value, TimeoutError)
        # libpq's own connect_timeout still bounds each connection attempt within it.
        with trio.fail_after(10):
            with pytest.raises(ConnectTimeoutError):
                await wal_reader.subscribe(
                    Recorder(),
                    f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=1",
                    unique("silent"),
                    [hz],
                )
        assert (await count_children(readers)).specs == 0
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_slot_creation_held_up_by_a_long_transaction_times_out(
    module_dsn: str, hz: str, readers: Ref
) -> None:
    slot = unique("held")
    async with await TrioConnection.connect(module_dsn) as blocker:
        # A running transaction with an xid: CREATE_REPLICATION_SLOT waits for it.
        await blocker.execute("SELECT txid_current()")
        with trio.fail_after(15):
            with pytest.raises(ReaderStartTimeout, match="creating the slot") as info:
                await wal_reader.subscribe(
                    Recorder(), module_dsn, slot, [hz], {"connect_timeout": 1}
                )
        assert "long-running transactions" in str(info.value)
        await blocker.rollback()
    assert (await count_children(readers)).specs == 0
    with trio.fail_after(15):
        ref = await wal_reader.subscribe(Recorder(), module_dsn, slot, [hz])
    await wal_reader.unsubscribe(ref)
