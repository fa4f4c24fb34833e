"""Benchmark the otpy runtime against a raw trio channel and against triotp.

Measures, in one run on one machine:

* call round trip (µs per call) and cast throughput (casts per second, a final
  call makes sure every cast was handled) for an otpy GenServer;
* the same for a raw trio memory-channel ping-pong: the floor any actor
  library on trio pays;
* the same for triotp (PyPI), which pins an old trio and therefore runs in its
  own virtualenv (benchmarks/.venvs/triotp, created on first use) as a
  subprocess that reports JSON;
* restart latency of a crashed child under a one_for_one supervisor: from the
  crash request until the new child's ``init`` has run (median and p99).

Every measurement is repeated and the median of the repetitions is reported,
because the machine is shared and noisy.  Usage::

    .venv/bin/python benchmarks/runtime.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import otpy

HERE = Path(__file__).resolve().parent
TRIOTP_VENV = HERE / ".venvs" / "triotp"
TRIOTP_VERSION = "0.2.1"


# -- raw trio channel ---------------------------------------------------------


async def raw_call(n: int) -> float:
    """Seconds for ``n`` request/reply round trips over two memory channels."""
    req_send, req_recv = trio.open_memory_channel[Any](math.inf)
    rep_send, rep_recv = trio.open_memory_channel[Any](math.inf)

    async def server() -> None:
        async for msg in req_recv:
            rep_send.send_nowait(msg)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        t0 = time.perf_counter()
        for i in range(n):
            req_send.send_nowait(i)
            await rep_recv.receive()
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return elapsed


async def raw_cast(n: int) -> float:
    """Seconds to push ``n`` one-way messages and get one final reply."""
    req_send, req_recv = trio.open_memory_channel[Any](math.inf)
    rep_send, rep_recv = trio.open_memory_channel[Any](math.inf)

    async def server() -> None:
        total = 0
        async for msg in req_recv:
            if msg is None:
                rep_send.send_nowait(total)
            else:
                total += msg

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        t0 = time.perf_counter()
        for _ in range(n):
            req_send.send_nowait(1)
        req_send.send_nowait(None)
        assert await rep_recv.receive() == n
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return elapsed


# -- otpy ---------------------------------------------------------------------


class Echo(otpy.GenServer):
    def __init__(self) -> None:
        self.total = 0

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        if request is None:
            return self.total
        return request

    async def handle_cast(self, request: Any) -> None:
        self.total += request


async def otpy_call(n: int) -> float:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Echo())
        call = otpy.call
        t0 = time.perf_counter()
        for i in range(n):
            await call(ref, i)
        elapsed = time.perf_counter() - t0
        await otpy.stop(ref)
    return elapsed


async def otpy_cast(n: int) -> float:
    async with trio.open_nursery() as nursery:
        ref = await otpy.start(nursery, Echo())
        cast = otpy.cast
        t0 = time.perf_counter()
        for _ in range(n):
            cast(ref, 1)
        assert await otpy.call(ref, None) == n
        elapsed = time.perf_counter() - t0
        await otpy.stop(ref)
    return elapsed


class Crashy(otpy.GenServer):
    started_at: list[float] = []

    async def init(self) -> None:
        Crashy.started_at.append(time.perf_counter())

    async def handle_cast(self, request: Any) -> None:
        raise RuntimeError("crash on request")


async def otpy_restart(n: int) -> list[float]:
    """Restart latencies (seconds) of ``n`` crashes of a one_for_one child."""
    latencies = []
    spec = otpy.ChildSpec(id="crashy", start=Crashy)
    async with trio.open_nursery() as nursery:
        sup = await otpy.start(
            nursery, otpy.Supervisor([spec], intensity=n + 1, period=3600), link=False
        )
        for _ in range(n):
            (info,) = await otpy.which_children(sup)
            ref = info.ref
            assert ref is not None
            before = len(Crashy.started_at)
            t0 = time.perf_counter()
            otpy.cast(ref, "crash")
            await ref.wait()
            await otpy.count_children(sup)  # handled after the restart
            assert len(Crashy.started_at) == before + 1
            latencies.append(Crashy.started_at[-1] - t0)
        await otpy.stop(sup)
    return latencies


# -- triotp (runs in its own virtualenv) ---------------------------------------

TRIOTP_SCRIPT = r"""
import json, math, sys, time, types
import trio
from triotp import gen_server, mailbox, supervisor

n, reps, restarts = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

mod = types.ModuleType("bench_echo")
async def init(arg):
    return 0
async def handle_call(message, caller, state):
    if message is None:
        return (gen_server.Reply(payload=state), state)
    return (gen_server.Reply(payload=message), state)
async def handle_cast(message, state):
    return (gen_server.NoReply(), state + message)
mod.init, mod.handle_call, mod.handle_cast = init, handle_call, handle_cast

async def started(name):
    while True:
        try:
            mailbox.whereis(name)
            return
        except Exception:
            await trio.sleep(0)

async def bench_call(name):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gen_server.start, mod, None, name)
        await trio.sleep(0.01)
        t0 = time.perf_counter()
        for i in range(n):
            await gen_server.call(name, i)
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return elapsed

async def bench_cast(name):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gen_server.start, mod, None, name)
        await trio.sleep(0.01)
        t0 = time.perf_counter()
        for _ in range(n):
            await gen_server.cast(name, 1)
        assert await gen_server.call(name, None) == n
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return elapsed

async def bench_restart():
    starts = []
    trigger = {}
    async def child():
        starts.append(time.perf_counter())
        ev = trio.Event()
        trigger["ev"] = ev
        await ev.wait()
        raise RuntimeError("crash on request")
    spec = supervisor.child_spec(id="crashy", task=child, args=[],
                                 restart=supervisor.restart_strategy.PERMANENT)
    opts = supervisor.options(max_restarts=restarts + 10, max_seconds=3600)
    latencies = []
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.start, [spec], opts)
        await trio.sleep(0.01)
        for _ in range(restarts):
            before = len(starts)
            t0 = time.perf_counter()
            trigger["ev"].set()
            while len(starts) == before:
                await trio.sleep(0)
            latencies.append(starts[-1] - t0)
        nursery.cancel_scope.cancel()
    return latencies

async def main():
    mailbox._init()
    out = {"call": [], "cast": [], "restart": []}
    for r in range(reps):
        out["call"].append(await bench_call(f"echo-call-{r}"))
        out["cast"].append(await bench_cast(f"echo-cast-{r}"))
    out["restart"] = await bench_restart()
    return out

import logbook
with logbook.NullHandler().applicationbound():
    print(json.dumps(trio.run(main)))
"""


def ensure_triotp_venv() -> Path | None:
    """Create benchmarks/.venvs/triotp with triotp installed; None if that is impossible."""
    python = TRIOTP_VENV / "bin" / "python"
    if python.exists():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(TRIOTP_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"triotp=={TRIOTP_VERSION}"], check=True
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"warning: could not set up triotp ({exc}); skipping it", file=sys.stderr)
        return None
    return python


def run_triotp(n: int, reps: int, restarts: int) -> dict[str, Any] | None:
    python = ensure_triotp_venv()
    if python is None:
        return None
    proc = subprocess.run(
        [str(python), "-c", TRIOTP_SCRIPT, str(n), str(reps), str(restarts)],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    if proc.returncode != 0:
        print(f"warning: triotp benchmark failed:\n{proc.stderr}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# -- driver -------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


async def run_local(n: int, reps: int, restarts: int) -> dict[str, Any]:
    out: dict[str, Any] = {"raw_call": [], "raw_cast": [], "otpy_call": [], "otpy_cast": []}
    for _ in range(reps):
        # Interleave the contenders so machine noise hits them alike.
        out["raw_call"].append(await raw_call(n))
        out["otpy_call"].append(await otpy_call(n))
        out["raw_cast"].append(await raw_cast(n))
        out["otpy_cast"].append(await otpy_cast(n))
    out["otpy_restart"] = await otpy_restart(restarts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    parser.add_argument("--no-triotp", action="store_true", help="skip the triotp comparison")
    args = parser.parse_args()
    n, reps, restarts = (2_000, 3, 200) if args.quick else (20_000, 7, 2_000)

    # Reports are created as in production, but not printed.
    logging.getLogger("otpy").addHandler(logging.NullHandler())
    logging.getLogger("otpy").propagate = False

    local = trio.run(run_local, n, reps, restarts)
    peer = None if args.no_triotp else run_triotp(n, reps, restarts)

    def per_call_us(samples: list[float]) -> float:
        return statistics.median(samples) / n * 1e6

    def per_second(samples: list[float]) -> float:
        return n / statistics.median(samples)

    call = {"raw": per_call_us(local["raw_call"]), "otpy": per_call_us(local["otpy_call"])}
    cast = {"raw": per_second(local["raw_cast"]), "otpy": per_second(local["otpy_cast"])}
    if peer is not None:
        call["triotp"] = per_call_us(peer["call"])
        cast["triotp"] = per_second(peer["cast"])
    restart = {"otpy": local["otpy_restart"]}
    if peer is not None:
        restart["triotp"] = peer["restart"]

    print(f"otpy runtime benchmark: n={n} per repetition, {reps} repetitions (medians)")
    print(f"python {sys.version.split()[0]}, trio {trio.__version__}")
    print()
    header = f"{'measure':<34}{'raw channel':>14}{'otpy':>14}{'triotp':>14}"
    print(header)
    print("-" * len(header))

    def cell(d: dict[str, float], key: str, fmt: str) -> str:
        return format(d[key], fmt) if key in d else "n/a"

    print(
        f"{'call round trip (µs/call)':<34}{cell(call, 'raw', '.2f'):>14}"
        f"{cell(call, 'otpy', '.2f'):>14}{cell(call, 'triotp', '.2f'):>14}"
    )
    print(
        f"{'cast throughput (k msgs/s)':<34}{format(cast['raw'] / 1e3, '.0f'):>14}"
        f"{format(cast['otpy'] / 1e3, '.0f'):>14}"
        f"{(format(cast['triotp'] / 1e3, '.0f') if 'triotp' in cast else 'n/a'):>14}"
    )
    for label, q in (("restart latency median (µs)", 0.5), ("restart latency p99 (µs)", 0.99)):
        values = {k: percentile(v, q) * 1e6 for k, v in restart.items()}
        print(
            f"{label:<34}{'-':>14}{cell(values, 'otpy', '.0f'):>14}"
            f"{cell(values, 'triotp', '.0f'):>14}"
        )
    print()
    print("ratios (higher is better for otpy):")
    print(f"  call: otpy costs {call['otpy'] / call['raw']:.2f}x the raw channel (target <= 2x)")
    print(f"  cast: raw/otpy throughput = {cast['raw'] / cast['otpy']:.2f}x (target <= 2x)")
    if "triotp" in call:
        speedup = call["triotp"] / call["otpy"]
        print(f"  call: otpy is {speedup:.2f}x faster than triotp (target >= 2x)")
        speedup = cast["otpy"] / cast["triotp"]
        print(f"  cast: otpy is {speedup:.2f}x faster than triotp (target >= 2x)")
    if args.json:
        print(json.dumps({"local": local, "triotp": peer}))


if __name__ == "__main__":
    main()
