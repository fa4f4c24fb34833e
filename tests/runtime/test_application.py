"""Applications: dependency order, env, failure, run() with real signals."""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from rt_helpers import Journal, worker_spec

import otpy
from otpy.errors import (
    ApplicationFailed,
    ApplicationStartError,
    DependencyCycle,
    InvalidArgument,
    OtpyError,
)


def make_app(
    name: str, journal: Journal, deps: tuple[otpy.Application, ...] = (), **kwargs: Any
) -> otpy.Application:
    def start(env: Mapping[str, Any]) -> otpy.ChildSpec:
        journal.record("env", (name, dict(env)))
        return otpy.Supervisor.child_spec(
            [worker_spec(f"{name}.w1", journal), worker_spec(f"{name}.w2", journal)],
            id=name,
            name=f"{name}_sup",
            intensity=env.get("intensity", 3),
        )

    return otpy.Application(name=name, start=start, dependencies=deps, **kwargs)


def diamond(journal: Journal) -> otpy.Application:
    base = make_app("base", journal, env={"greeting": "hi"})
    left = make_app("left", journal, (base,))
    right = make_app("right", journal, (base,))
    return make_app("top", journal, (left, right))


def test_start_order_is_dependency_order() -> None:
    journal = Journal()
    assert [a.name for a in otpy.application.start_order(diamond(journal))] == [
        "base",
        "left",
        "right",
        "top",
    ]


def test_dependency_cycles_and_name_clashes_are_rejected() -> None:
    journal = Journal()
    a_deps: list[otpy.Application] = []

    def start(env: Mapping[str, Any]) -> otpy.Supervisor:
        return otpy.Supervisor([])

    b = otpy.Application("b", start, dependencies=a_deps)
    a = otpy.Application("a", start, dependencies=(b,))
    a_deps.append(a)  # b's tuple was copied at creation; build a real cycle instead:
    c = otpy.Application("c", start)
    object.__setattr__(c, "dependencies", (otpy.Application("d", start, dependencies=(c,)),))
    with pytest.raises(DependencyCycle, match="c -> d -> c"):
        otpy.application.start_order(c)
    twin = make_app("base", journal)
    with pytest.raises(OtpyError, match="two different applications"):
        otpy.application.start_order(make_app("x", journal, (make_app("base", journal), twin)))


async def test_applications_start_in_order_and_stop_in_reverse() -> None:
    journal = Journal()
    async with otpy.start_application(diamond(journal), env={"base": {"extra": 1}}) as system:
        assert [a.name for a, _ in system.running] == ["base", "left", "right", "top"]
        starts = journal.starts()
        assert starts == [
            "base.w1",
            "base.w2",
            "left.w1",
            "left.w2",
            "right.w1",
            "right.w2",
            "top.w1",
            "top.w2",
        ]
        assert system.env("base") == {"greeting": "hi", "extra": 1}
        assert otpy.get_env("base", "greeting") == "hi"
        assert otpy.whereis("top_sup") is system.root("top")
    assert journal.stops() == list(reversed(starts))
    assert otpy.whereis("top_sup") is None


async def test_start_failure_stops_the_started_ones() -> None:
    journal = Journal()
    journal.init_failures["right.w2"] = 1
    with pytest.raises(ApplicationStartError) as info:
        async with otpy.start_application(diamond(journal)):
            raise AssertionError("the block must not run")
    assert info.value.app == "right"
    assert isinstance(info.value.__cause__, otpy.errors.InitError)
    assert journal.starts() == ["base.w1", "base.w2", "left.w1", "left.w2", "right.w1"]
    assert journal.stops() == ["right.w1", "left.w2", "left.w1", "base.w2", "base.w1"]


async def test_root_supervisor_giving_up_fails_the_system(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = Journal()
    base = make_app("base", journal)
    top = make_app("top", journal, (base,))
    cancelled = False
    with pytest.raises(ApplicationFailed) as info:
        async with otpy.start_application(top, env={"top": {"intensity": 0}}):
            ref = otpy.whereis("top.w1")
            assert ref is None  # workers are not registered; find it through the supervisor
            (w1, _) = [i.ref for i in await otpy.which_children("top_sup")]
            assert w1 is not None
            otpy.cast(w1, "crash")
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled = True
                raise
    assert cancelled  # the block was cancelled when the application failed
    assert info.value.app == "top"
    assert isinstance(info.value.reason.error, otpy.errors.GaveUp)
    assert journal.stops()[-2:] == ["base.w2", "base.w1"]
    events = [getattr(r, "event", None) for r in caplog.records]
    assert "application_failed" in events


async def test_root_failing_while_a_later_app_starts_cancels_the_block(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    base = make_app("base", journal)

    class KillsBase(otpy.GenServer):
        async def init(self) -> None:
            base_root = otpy.whereis("base_sup")
            assert base_root is not None
            base_root.kill()
            await base_root.wait()
            await trio.testing.wait_all_tasks_blocked()  # the system has seen the failure

    top = otpy.Application(name="top", start=lambda env: KillsBase(), dependencies=(base,))
    cancelled = False
    with trio.fail_after(60), pytest.raises(ApplicationFailed) as info:
        async with otpy.start_application(top):
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                cancelled = True
                raise
    assert cancelled
    assert info.value.app == "base"


async def test_user_exception_in_block_is_not_wrapped() -> None:
    journal = Journal()
    with pytest.raises(KeyError):
        async with otpy.start_application(make_app("solo", journal)):
            raise KeyError("mine")
    assert journal.stops() == ["solo.w2", "solo.w1"]


async def test_serve_until_stop_with_own_registry() -> None:
    journal = Journal()
    registry = otpy.Registry("app")
    async with trio.open_nursery() as nursery:
        system = await nursery.start(
            lambda task_status: otpy.serve(
                make_app("solo", journal), registry=registry, task_status=task_status
            )
        )
        assert registry.whereis("solo_sup") is system.root("solo")
        assert otpy.whereis("solo_sup") is None  # the run's default registry is untouched
        system.stop()
    assert journal.stops() == ["solo.w2", "solo.w1"]
    assert registry.registered() == {}


SCRIPT = textwrap.dedent(
    """
    import logging, os, sys
    import trio
    import otpy

    HANG = os.environ.get("HANG") == "1"

    class Announcer(otpy.GenServer):
        def __init__(self, name):
            self.name = name

        async def init(self):
            print("start", self.name, flush=True)

        async def terminate(self, reason):
            print("stop", self.name, reason, flush=True)
            if HANG and self.name == "top":
                await trio.sleep_forever()

    def app(name, deps=()):
        def start(env):
            return otpy.Supervisor([Announcer.child_spec(name, id=name, shutdown="infinity")])
        return otpy.Application(name, start, dependencies=deps)

    base = app("base")
    top = app("top", (base,))

    class Ready(otpy.GenServer):
        async def init(self):
            print("ready", flush=True)

    def last(env):
        return otpy.Supervisor([Ready.child_spec()])

    main = otpy.Application("main", last, dependencies=(top,))
    code = otpy.run(main)
    print("exit", int(code), flush=True)
    sys.exit(code)
    """
)


def read_until(proc: subprocess.Popen[bytes], marker: bytes) -> list[str]:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    while marker not in buffer:
        ready, _, _ = select.select([fd], [], [], 20)
        assert ready, f"no {marker!r} in time: {buffer!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"exited before {marker!r}: {buffer!r}"
        buffer += chunk
    return buffer.decode().splitlines()


def run_until_ready(tmp_path: Path, hang: bool = False) -> subprocess.Popen[bytes]:
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "HANG": "1" if hang else "0"}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, env=env)
    assert read_until(proc, b"ready\n") == ["start base", "start top", "ready"]
    return proc


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
def test_run_stops_in_reverse_order_on_signal(tmp_path: Path, signum: int, code: int) -> None:
    proc = run_until_ready(tmp_path)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=20)
    assert out.decode().splitlines() == ["stop top shutdown", "stop base shutdown", f"exit {code}"]
    assert proc.returncode == code


def test_second_signal_forces_a_hanging_stop(tmp_path: Path) -> None:
    proc = run_until_ready(tmp_path, hang=True)
    proc.send_signal(signal.SIGTERM)
    assert read_until(proc, b"stop top shutdown\n") == ["stop top shutdown"]
    proc.send_signal(signal.SIGTERM)  # top's terminate hangs: a second signal cancels it all
    out, _ = proc.communicate(timeout=20)
    assert out.decode().splitlines() == ["exit 3"]
    assert proc.returncode == otpy.ExitCode.FORCED


def test_run_exit_codes_for_failures(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL)
    journal = Journal()
    journal.init_failures["solo.w1"] = 1
    assert otpy.run(make_app("solo", journal), handle_signals=False) == otpy.ExitCode.START_FAILED

    class Quitter(otpy.GenServer):
        async def init(self) -> None:
            otpy.current_system().stop()  # type: ignore[union-attr]

    def quit_start(env: Mapping[str, Any]) -> otpy.Supervisor:
        return otpy.Supervisor([Quitter.child_spec()])

    quitter = otpy.Application("quit", quit_start)
    assert otpy.run(quitter, handle_signals=False) == otpy.ExitCode.STOPPED

    class Crasher(otpy.GenServer):
        async def init(self) -> None:
            self.start_soon(self.boom)

        async def boom(self) -> None:
            raise RuntimeError("boom")

    def crash_start(env: Mapping[str, Any]) -> otpy.Supervisor:
        return otpy.Supervisor([Crasher.child_spec()], intensity=0)

    crasher = otpy.Application("crash", crash_start)
    assert otpy.run(crasher, handle_signals=False) == otpy.ExitCode.FAILED


async def test_root_stopping_normally_stops_the_system() -> None:
    journal = Journal()
    base = make_app("base", journal)
    top = make_app("top", journal, (base,))
    async with trio.open_nursery() as nursery:
        system = await nursery.start(lambda task_status: otpy.serve(top, task_status=task_status))
        await otpy.stop("top_sup")
        # serve() returns on its own: the nursery can exit.
    assert system.stop_reason == "application top exited"
    assert journal.stops() == ["top.w2", "top.w1", "base.w2", "base.w1"]


FAILING_SCRIPT = textwrap.dedent(
    """
    import otpy

    class Broken(otpy.GenServer):
        async def init(self):
            raise ConnectionRefusedError("db.example:5432 refused the connection")

    app = otpy.Application("broken", lambda env: otpy.Supervisor([Broken.child_spec()]))
    otpy.run(app)  # the README's pattern: the return value is ignored
    print("not reached", flush=True)
    """
)


def test_bare_run_at_module_level_exits_non_zero_when_the_app_fails_to_start(
    tmp_path: Path,
) -> None:
    script = tmp_path / "broken.py"
    script.write_text(FAILING_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == otpy.ExitCode.START_FAILED == 70
    assert proc.stdout == ""
    # One clear line, no traceback (logging is not configured: Python's last resort prints it).
    (line,) = proc.stderr.splitlines()
    assert "application 'broken' failed to start" in line
    assert "Broken.init raised ConnectionRefusedError: db.example:5432 refused" in line


def test_run_exits_on_failure_only_when_asked_or_owning_the_signals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL)
    journal = Journal()
    journal.init_failures["solo.w1"] = 2
    app = make_app("solo", journal)
    with pytest.raises(SystemExit) as info:
        otpy.run(app, handle_signals=False, exit_on_failure=True)
    assert info.value.code == otpy.ExitCode.START_FAILED
    assert otpy.run(app, handle_signals=False) == otpy.ExitCode.START_FAILED
    with pytest.raises(InvalidArgument):
        otpy.run(app, handle_signals="false")  # type: ignore[arg-type]


def test_run_raises_a_dependency_cycle_itself_not_wrapped_in_a_group() -> None:
    a = otpy.Application("a", lambda env: otpy.Supervisor([]))
    clash = otpy.Application("a", lambda env: otpy.Supervisor([]), dependencies=[a])
    with pytest.raises(DependencyCycle):
        otpy.run(clash, handle_signals=False)
