"""The reader's lifecycle (ReaderPhase), exercised without a server.

The reader runs as a real actor under trio's MockClock; only its replication
session is a stand-in (:class:`FakeSession`), whose ``open`` and
``take_over`` do what a test tells them.  What is checked is the phase
sequence, whether ``handle_replication_stop`` is called, and that the
background task is stopped and awaited by ``terminate``.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import otpy
from otpy.pg.replication.errors import SlotInUse, SlotLost
from otpy.pg.replication.lsn import LSN
from otpy.pg.replication.options import ReaderOptions
from otpy.pg.wal_reader import ChangeBatch, ReaderPhase, ReplicationHandler, Subscription
from otpy.pg.wal_reader.reader import TRANSITIONS, WalReader

STARTING, STANDBY, SNAPSHOT, STREAMING, STOPPING = (
    ReaderPhase.STARTING,
    ReaderPhase.STANDBY,
    ReaderPhase.SNAPSHOT,
    ReaderPhase.STREAMING,
    ReaderPhase.STOPPING,
)


class FakeSession:
    """A replication session that never touches a socket.

    ``open`` raises ``open_error`` (if set); ``take_over`` waits until
    ``slot_freed`` is set; the loops wait until cancelled.
    """

    def __init__(self, open_error: BaseException | None = None) -> None:
        self.open_error = open_error
        self.slot_freed = trio.Event()
        self.loops_running = trio.Event()
        self.closed = False
        self.aborted = False
        self.meta = None
        self.acked = LSN(0)
        self.pending = 0
        self.phase = "fake"

    async def open(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.open_error is not None:
            raise self.open_error

    async def start(self) -> None:
        await trio.lowlevel.checkpoint()

    async def take_over(self, start: Any = None) -> None:
        await self.slot_freed.wait()
        if start is not None:
            await start()

    async def read_loop(self, out: trio.MemorySendChannel[ChangeBatch]) -> None:
        self.loops_running.set()
        await trio.sleep_forever()

    async def status_loop(self) -> None:
        await trio.sleep_forever()

    async def close(self, *, final_ack: bool = True, release_timeout: float = 5.0) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def acknowledge(self, lsn: LSN) -> None:
        pass


class StopRecorder(ReplicationHandler):
    def __init__(self) -> None:
        self.stops: list[str] = []

    async def handle_replication_data(self, ref: Any, changes: ChangeBatch) -> None:
        pass

    async def handle_replication_stop(self, ref: Any, slot_name: str) -> None:
        self.stops.append(slot_name)


class PhaseRecorder(WalReader):
    """A WalReader over a :class:`FakeSession` that records every phase it enters."""

    def __init__(self, subscription: Subscription, session: FakeSession) -> None:
        super().__init__(subscription)
        self.session = session  # type: ignore[assignment]
        self.phases: list[ReaderPhase] = [self.phase]

    def _enter(self, phase: ReaderPhase) -> None:
        super()._enter(phase)
        self.phases.append(phase)


def subscription(handler: StopRecorder, **options: Any) -> Subscription:
    return Subscription(
        slot="phase_slot",
        publications=("pub",),
        database="fake",
        options=ReaderOptions.coerce({"slot_check_interval": None, **options}),
        handler=handler,
        supervisor=None,  # type: ignore[arg-type]  # no supervisor: the reader is started directly
        key=("fake", "5432", "phase_slot"),
        child_id=("wal_reader", "phase_slot", 0),
        connect_kwargs={},
    )


def test_every_phase_moves_forward_and_can_stop() -> None:
    order = list(ReaderPhase)
    assert order[0] is STARTING and order[-1] is STOPPING
    for phase, moves in TRANSITIONS.items():
        assert all(order.index(move) > order.index(phase) for move in moves), phase
        if phase is not STOPPING:
            assert STOPPING in moves, phase
    assert TRANSITIONS[STOPPING] == frozenset()
    assert set(TRANSITIONS) == set(ReaderPhase)


def test_a_move_the_table_does_not_allow_is_refused() -> None:
    reader = PhaseRecorder(subscription(StopRecorder()), FakeSession())
    reader._enter(STREAMING)
    with pytest.raises(AssertionError, match="no move from STREAMING to STANDBY"):
        reader._enter(STANDBY)
    assert reader.phase is STREAMING


def test_the_standby_flags_follow_the_phase() -> None:
    sub = subscription(StopRecorder())
    reader = PhaseRecorder(sub, FakeSession())
    assert not reader.standby and not sub.counters.standby
    reader._enter(STANDBY)
    assert reader.standby and sub.counters.standby
    reader._enter(STREAMING)
    assert not reader.standby and not sub.counters.standby


async def test_a_streaming_reader_stops_its_loops_and_calls_the_stop_hook(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = StopRecorder()
    session = FakeSession()
    reader = PhaseRecorder(subscription(handler), session)
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, reader)
        assert reader.phase is STREAMING
        await session.loops_running.wait()
        assert reader.subscription.state.streaming
        await otpy.stop(ref)
    assert reader.phases == [STARTING, STREAMING, STOPPING]
    assert session.closed and not session.aborted
    assert not reader.subscription.state.streaming
    assert handler.stops == ["phase_slot"]


async def test_a_standby_reader_stopped_before_taking_over_makes_no_stop_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = StopRecorder()
    session = FakeSession(open_error=SlotInUse("phase_slot", 4242))
    reader = PhaseRecorder(subscription(handler, standby=True), session)
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, reader)
        assert reader.phase is STANDBY
        await trio.sleep(60)  # standing by, however long
        assert reader.phase is STANDBY
        await otpy.stop(ref)
    assert reader.phases == [STARTING, STANDBY, STOPPING]
    assert session.closed
    assert handler.stops == []


async def test_a_standby_reader_that_took_over_streams_and_gets_the_stop_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = StopRecorder()
    session = FakeSession(open_error=SlotInUse("phase_slot", 4242))
    reader = PhaseRecorder(subscription(handler, standby=True), session)
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, reader)
        session.slot_freed.set()
        await session.loops_running.wait()
        assert reader.phase is STREAMING
        assert reader.subscription.state.started
        await otpy.stop(ref)
    assert reader.phases == [STARTING, STANDBY, STREAMING, STOPPING]
    assert handler.stops == ["phase_slot"]


async def test_a_restart_that_finds_its_slot_lost_stops_for_good_from_starting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = StopRecorder()
    lost = SlotLost("phase_slot")
    session = FakeSession(open_error=lost)
    sub = subscription(handler)
    sub.state.started = True  # a restart: a terminal error stops the reader, not init
    reader = PhaseRecorder(sub, session)
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, reader, link=False)
        reason = await ref.wait()
    assert reason.kind == "shutdown" and reason.detail is lost
    assert reader.phases == [STARTING, STOPPING]
    assert handler.stops == ["phase_slot"]
    assert await sub.wait_stopped() is lost


@pytest.mark.parametrize("phase", [STANDBY, SNAPSHOT, STREAMING])
async def test_a_background_task_that_starts_after_terminate_began_ends_at_once(
    phase: ReaderPhase, autojump_clock: trio.testing.MockClock
) -> None:
    session = FakeSession()
    reader = PhaseRecorder(subscription(StopRecorder(), snapshot="initial"), session)
    reader._enter(phase)
    reader._enter(STOPPING)  # terminate ran before the scheduled task's first line
    task = {STANDBY: reader._standby, SNAPSHOT: reader._snapshot_then_stream}.get(
        phase, reader._stream
    )
    with trio.fail_after(1):
        await task()
        await reader._stream_done.wait()
    assert not session.loops_running.is_set() and not session.aborted


class FakeSnapshot:
    """An initial snapshot with nothing to read: ``run`` returns at once."""

    def __init__(self, stream_after: bool) -> None:
        self.pending = True
        self.stream_after = stream_after
        self.ran = False

    async def prepare(self) -> None:
        await trio.lowlevel.checkpoint()

    async def run(self, deliver: Any) -> None:
        await trio.lowlevel.checkpoint()
        self.ran = True
        self.pending = False


async def test_a_reader_with_an_initial_snapshot_reads_it_then_streams(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = StopRecorder()
    session = FakeSession()
    reader = PhaseRecorder(subscription(handler, snapshot="initial"), session)
    reader.snapshot = FakeSnapshot(stream_after=True)  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, reader)
        await session.loops_running.wait()
        await otpy.stop(ref)
    assert reader.phases == [STARTING, SNAPSHOT, STREAMING, STOPPING]
    assert handler.stops == ["phase_slot"]


async def test_an_initial_only_snapshot_ends_the_subscription_without_streaming(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = StopRecorder()
    session = FakeSession()
    sub = subscription(handler, snapshot="initial_only")
    reader = PhaseRecorder(sub, session)
    reader.snapshot = FakeSnapshot(stream_after=False)  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, reader)
        reason = await ref.wait()
    assert reason.kind == "normal"
    assert reader.phases == [STARTING, SNAPSHOT, STOPPING]
    assert not session.loops_running.is_set()
    assert handler.stops == ["phase_slot"]
    assert sub.state.ended and await sub.wait_stopped() is None
