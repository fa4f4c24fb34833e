"""Benchmark the otpy runtime at scale: many actors, and a restart storm.

Measures, each in a fresh process (so one measurement's garbage never lowers
the next one's memory figure):

* **start**: N actors started one after another (each start waits until the
  actor runs, as ``otpy.start`` waits for ``init``), then one call to each,
  then the memory they hold while idle (RSS growth / N, which includes the
  allocator's overhead; ``--trace`` adds tracemalloc's exact figure).  The
  contenders: an otpy GenServer; a bare trio task waiting on a memory channel
  of its own (started with ``start_soon``, and with ``nursery.start`` as otpy
  starts); triotp's gen_server (in its own virtualenv, see ``runtime.py``);
* **restart storm**: N children of one ``one_for_one`` supervisor all crash
  at once and are all restarted; the time until the last one ran ``init``,
  for growing N, shows whether the cost per restart stays flat (no quadratic
  behaviour).  triotp's supervisor beside it.

Usage::

    .venv/bin/python benchmarks/runtime_scale.py [--quick] [--sizes 10000,100000,1000000]
        [--storm 1000,10000,100000] [--no-triotp] [--trace] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runtime import ensure_triotp_venv  # the sibling benchmark's helpers

import otpy

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident set size of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Meter:
    """Memory growth since creation: RSS always, tracemalloc's count with ``trace``."""

    def __init__(self, trace: bool) -> None:
        self.trace = trace
        gc.collect()
        if trace:
            tracemalloc.start()
        self.rss0 = rss()

    def done(self, n: int) -> dict[str, float]:
        out = {"rss_bytes": (rss() - self.rss0) / n}
        if self.trace:
            out["traced_bytes"] = tracemalloc.get_traced_memory()[0] / n
            tracemalloc.stop()
        return out


# -- contenders for "start N, call each" ---------------------------------------


class Idle(otpy.GenServer):
    """An actor that answers calls and otherwise waits: the per-session actor shape."""

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return request


async def scale_otpy(n: int, trace: bool) -> dict[str, float]:
    meter = Meter(trace)
    refs: list[otpy.Ref] = []
    async with trio.open_nursery() as nursery:
        start = otpy.start
        t0 = time.perf_counter()
        for _ in range(n):
            refs.append(await start(nursery, Idle()))
        t1 = time.perf_counter()
        call = otpy.call
        for i, ref in enumerate(refs):
            assert await call(ref, i) == i
        t2 = time.perf_counter()
        out = meter.done(n)
        nursery.cancel_scope.cancel()
    return {"start_us": (t1 - t0) / n * 1e6, "call_us": (t2 - t1) / n * 1e6, **out}


async def _bare_worker(
    receive: trio.MemoryReceiveChannel[Any],
    reply: trio.MemorySendChannel[Any],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    async for msg in receive:
        reply.send_nowait(msg)


async def _scale_bare(n: int, trace: bool, *, use_start: bool) -> dict[str, float]:
    meter = Meter(trace)
    senders: list[trio.MemorySendChannel[Any]] = []
    reply_send, reply_recv = trio.open_memory_channel[Any](math.inf)
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        for _ in range(n):
            send, receive = trio.open_memory_channel[Any](math.inf)
            senders.append(send)
            if use_start:
                await nursery.start(_bare_worker, receive, reply_send)
            else:
                nursery.start_soon(_bare_worker, receive, reply_send)
                await trio.lowlevel.checkpoint()  # let it run up to its receive
        t1 = time.perf_counter()
        for i, send in enumerate(senders):
            send.send_nowait(i)
            assert await reply_recv.receive() == i
        t2 = time.perf_counter()
        out = meter.done(n)
        nursery.cancel_scope.cancel()
    return {"start_us": (t1 - t0) / n * 1e6, "call_us": (t2 - t1) / n * 1e6, **out}


async def scale_bare_min(n: int, trace: bool) -> dict[str, float]:
    """The floor: a task with no mailbox at all, parked in ``sleep_forever`` (no call)."""
    meter = Meter(trace)
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        for _ in range(n):
            nursery.start_soon(trio.sleep_forever)
            await trio.lowlevel.checkpoint()  # let it run up to its sleep
        t1 = time.perf_counter()
        out = meter.done(n)
        nursery.cancel_scope.cancel()
    return {"start_us": (t1 - t0) / n * 1e6, "call_us": math.nan, **out}


async def scale_bare(n: int, trace: bool) -> dict[str, float]:
    return await _scale_bare(n, trace, use_start=False)


async def scale_bare_start(n: int, trace: bool) -> dict[str, float]:
    return await _scale_bare(n, trace, use_start=True)


# -- restart storm --------------------------------------------------------------


class Fragile(otpy.GenServer):
    """A child that counts its starts and crashes on request."""

    inits = 0
    target = 0
    all_started: trio.Event | None = None

    async def init(self) -> None:
        cls = Fragile
        cls.inits += 1
        if cls.inits == cls.target and cls.all_started is not None:
            cls.all_started.set()

    async def handle_cast(self, request: Any) -> None:
        raise RuntimeError("crash on request")


async def storm_otpy(n: int, trace: bool) -> dict[str, float]:
    specs = [otpy.ChildSpec(id=i, start=Fragile) for i in range(n)]
    Fragile.inits, Fragile.target = 0, 2 * n
    Fragile.all_started = trio.Event()
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        sup = await otpy.start(
            nursery, otpy.Supervisor(specs, intensity=2 * n, period=3600), link=False
        )
        t1 = time.perf_counter()
        children = await otpy.which_children(sup)
        t2 = time.perf_counter()
        for info in children:
            assert info.ref is not None
            otpy.cast(info.ref, "crash")
        await Fragile.all_started.wait()
        t3 = time.perf_counter()
        counts = await otpy.count_children(sup)
        assert counts.active == n, counts
        await otpy.stop(sup)
        t4 = time.perf_counter()
    return {
        "sup_start_us": (t1 - t0) / n * 1e6,
        "which_children_us": (t2 - t1) / n * 1e6,
        "storm_s": t3 - t2,
        "storm_us": (t3 - t2) / n * 1e6,
        "stop_us": (t4 - t3) / n * 1e6,
    }


LOCAL = {
    "otpy": scale_otpy,
    "bare": scale_bare,
    "bare_min": scale_bare_min,
    "bare_start": scale_bare_start,
    "storm_otpy": storm_otpy,
}

# -- triotp (own virtualenv, as in runtime.py) --------------------------------

TRIOTP_SCRIPT = r"""
import gc, json, os, sys, time, types
import trio
from triotp import gen_server, mailbox, supervisor

kind, n = sys.argv[1], int(sys.argv[2])
PAGE = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE

mod = types.ModuleType("bench_idle")
async def init(arg):
    return None
async def handle_call(message, caller, state):
    return (gen_server.Reply(payload=message), state)
mod.init, mod.handle_call = init, handle_call

async def scale():
    gc.collect()
    rss0 = rss()
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        for i in range(n):
            name = f"a{i}"
            nursery.start_soon(gen_server.start, mod, None, name)
            while True:  # started = registered, as triotp has no start ack
                try:
                    mailbox.whereis(name)
                    break
                except Exception:
                    await trio.sleep(0)
        t1 = time.perf_counter()
        for i in range(n):
            assert await gen_server.call(f"a{i}", i) == i
        t2 = time.perf_counter()
        mem = (rss() - rss0) / n
        nursery.cancel_scope.cancel()
    return {"start_us": (t1 - t0) / n * 1e6, "call_us": (t2 - t1) / n * 1e6, "rss_bytes": mem}

async def storm():
    starts = [0]
    done = trio.Event()
    crash = trio.Event()
    async def child():
        starts[0] += 1
        if starts[0] == 2 * n:
            done.set()
        if starts[0] <= n:
            await crash.wait()
            raise RuntimeError("crash on request")
        await trio.sleep_forever()
    specs = [supervisor.child_spec(id=f"c{i}", task=child, args=[],
                                   restart=supervisor.restart_strategy.PERMANENT)
             for i in range(n)]
    opts = supervisor.options(max_restarts=3, max_seconds=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.start, specs, opts)
        while starts[0] < n:
            await trio.sleep(0)
        t0 = time.perf_counter()
        crash.set()
        await done.wait()
        t1 = time.perf_counter()
        nursery.cancel_scope.cancel()
    return {"storm_s": t1 - t0, "storm_us": (t1 - t0) / n * 1e6}

async def main():
    mailbox._init()
    return await (scale() if kind == "scale" else storm())

import logbook
with logbook.NullHandler().applicationbound():
    print(json.dumps(trio.run(main)))
"""


TRIOTP_TIMEOUT = 300
"""Seconds one triotp measurement may take (its starts slow down as N grows)."""


def run_triotp(kind: str, n: int) -> dict[str, float] | None:
    python = ensure_triotp_venv()
    if python is None:
        return None
    try:
        proc = subprocess.run(
            [str(python), "-c", TRIOTP_SCRIPT, kind, str(n)],
            capture_output=True,
            text=True,
            check=False,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            timeout=TRIOTP_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        print(f"warning: triotp {kind} n={n} took over {TRIOTP_TIMEOUT} s", file=sys.stderr)
        return None
    if proc.returncode != 0:
        print(f"warning: triotp {kind} n={n} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_one(kind: str, n: int, trace: bool) -> dict[str, float] | None:
    """One measurement in a fresh interpreter; None if it failed (reported on stderr)."""
    if kind.endswith("triotp"):
        return run_triotp("storm" if kind.startswith("storm") else "scale", n)
    cmd = [sys.executable, __file__, "--one", kind, str(n)] + (["--trace"] if trace else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"warning: {kind} n={n} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def quiet_logs() -> None:
    """Reports are created as in production, but not printed."""
    logging.getLogger("otpy").addHandler(logging.NullHandler())
    logging.getLogger("otpy").propagate = False


def fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "n/a"
    return "-" if math.isnan(value) else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--sizes", help="comma-separated actor counts for the start benchmark")
    parser.add_argument("--storm", help="comma-separated child counts for the restart storm")
    parser.add_argument("--no-triotp", action="store_true", help="skip the triotp comparison")
    parser.add_argument(
        "--triotp-max",
        type=int,
        default=10_000,
        help="largest N run with triotp (its starts slow down as N grows: minutes beyond 10k)",
    )
    parser.add_argument("--trace", action="store_true", help="also count memory with tracemalloc")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        quiet_logs()
        kind, n = args.one[0], int(args.one[1])
        print(json.dumps(trio.run(LOCAL[kind], n, args.trace)))
        return

    sizes = [1_000, 10_000] if args.quick else [10_000, 100_000, 1_000_000]
    storms = [1_000, 4_000] if args.quick else [1_000, 10_000, 100_000]
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    if args.storm:
        storms = [int(s) for s in args.storm.split(",")]
    triotp_max = args.triotp_max

    results: dict[str, dict[int, dict[str, float] | None]] = {}
    kinds = ["bare_min", "bare", "bare_start", "otpy"] + ([] if args.no_triotp else ["triotp"])
    for n in sizes:
        for kind in kinds:
            if kind == "triotp" and n > triotp_max:
                continue
            results.setdefault(kind, {})[n] = run_one(kind, n, args.trace)
    storm_kinds = ["storm_otpy"] + ([] if args.no_triotp else ["storm_triotp"])
    for n in storms:
        for kind in storm_kinds:
            if kind == "storm_triotp" and n > triotp_max:
                continue
            results.setdefault(kind, {})[n] = run_one(kind, n, False)

    print(f"otpy runtime at scale: python {sys.version.split()[0]}, trio {trio.__version__}")
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end")
    print()
    head = f"{'N':>9} {'contender':<12}{'start µs':>10}{'call µs':>10}{'bytes (RSS)':>13}"
    if args.trace:
        head += f"{'bytes (traced)':>16}"
    head += f"{'start/bare':>12}{'mem/bare':>10}"
    print(head)
    print("-" * len(head))
    for n in sizes:
        bare = (results.get("bare") or {}).get(n)
        for kind in kinds:
            r = (results.get(kind) or {}).get(n)
            if kind not in results or n not in results[kind]:
                continue
            line = f"{n:>9} {kind:<12}"
            if r is None:
                print(line + "failed")
                continue
            line += f"{fmt(r['start_us'], '.1f'):>10}{fmt(r['call_us'], '.1f'):>10}"
            line += f"{fmt(r['rss_bytes'], '.0f'):>13}"
            if args.trace:
                line += f"{fmt(r.get('traced_bytes'), '.0f'):>16}"
            if bare:
                line += f"{r['start_us'] / bare['start_us']:>11.2f}x"
                line += f"{r['rss_bytes'] / bare['rss_bytes']:>9.2f}x"
            print(line)
    print()
    head = f"{'N':>9} {'contender':<14}{'storm s':>10}{'µs/restart':>12}{'vs smallest N':>15}"
    print(head)
    print("-" * len(head))
    for kind in storm_kinds:
        base = None
        for n in storms:
            if kind not in results or n not in results[kind]:
                continue
            r = results[kind][n]
            if r is None:
                print(f"{n:>9} {kind:<14}failed")
                continue
            base = base or r["storm_us"]
            print(
                f"{n:>9} {kind:<14}{r['storm_s']:>10.3f}{r['storm_us']:>12.1f}"
                f"{r['storm_us'] / base:>14.2f}x"
            )
    print()
    print("targets: otpy start <= 3x bare, memory <= 3x bare, 1M actors fit,")
    print("         µs/restart flat in N (no quadratic behaviour)")
    if args.json:
        print(json.dumps({k: {str(n): r for n, r in v.items()} for k, v in results.items()}))


if __name__ == "__main__":
    main()
