"""The pool's supervision tree: manager actor, worker supervisors, child spec.

One pool is this tree (``rest_for_one``)::

    pool supervisor (rest_for_one)
    ├── PoolManager            registered as ("otpy.pg.pool", name); owns the PoolCore
    ├── stable workers         Supervisor(one_for_one) of min_size ConnectionWorkers
    └── on-demand workers      DynamicSupervisor of temporary ConnectionWorkers

Why this shape:

* ``rest_for_one`` with the manager first: if the manager dies, its state
  (idle stack, waiters) is gone, so every worker is restarted against the new
  manager.  Workers close their idle connections when they stop, and a
  connection checked out at that moment is closed by its caller at check-in:
  a manager crash leaks nothing.  Waiters are failed at once with
  :class:`~otpy.pg.pool.PoolClosed` rather than left to time out.
* A crashing worker is restarted on its own (``one_for_one``, with the
  pool's reconnect back-off): the pool and the other connections carry on.
* On-demand connections are temporary children: one that closes after
  ``max_idle`` exits normally and is forgotten; the manager starts new ones
  when callers queue.
* The manager never does I/O: connecting, resetting and health checks are
  the workers' business, so a slow or unreachable server never blocks it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import trio

from otpy._util import raise_unwrapped
from otpy.actor import Ref
from otpy.child_spec import ChildSpec, ChildType, Restart
from otpy.dynamic_supervisor import DynamicSupervisor
from otpy.errors import ActorExited, InitError, SupervisorError
from otpy.exit_reason import SHUTDOWN
from otpy.gen_server import GenServer
from otpy.gen_server import start as start_actor
from otpy.pg.config import DatabaseConfig, PoolConfig, check_bool, check_seconds
from otpy.pg.pool.box import PoolBox
from otpy.pg.pool.core import PoolCore
from otpy.pg.pool.errors import PoolNotFound
from otpy.pg.pool.worker import ConnectionWorker
from otpy.process import cast
from otpy.process import stop as stop_actor
from otpy.registry import current_registry
from otpy.supervisor import Strategy, Supervisor, start_child

__all__ = [
    "LEAK_CHECK_INTERVAL",
    "PoolManager",
    "check_tree_options",
    "lookup",
    "make_pool_supervisor",
    "pool_key",
    "pool_spec",
    "running_cores",
    "running_pool",
]

logger = logging.getLogger("otpy.pg.pool")

#: Seconds between sweeps for connections held by tasks that ended without
#: returning them (see :meth:`PoolCore.reclaim_leaks`).
LEAK_CHECK_INTERVAL: Final = 5.0

_NAMESPACE: Final = "otpy.pg.pool"

#: Manager ref -> its pool state; entries are removed when the manager exits.
_CORES: dict[Ref, PoolCore] = {}

#: Pool name -> (registry, state) of the last successful lookup: every
#: checkout looks its pool up, and this halves the cost.  An entry is used only
#: for the same registry and while the state is open (a closed state means its
#: manager exited, so the name is looked up again).
_LOOKUPS: dict[str, tuple[Any, PoolCore]] = {}


def running_cores() -> list[PoolCore]:
    """The state of every pool running in this process, whatever its registry.

    For metrics exporters: reading it costs no I/O and no message.
    """
    return [core for core in _CORES.values() if not core.closed]


def pool_key(name: str) -> tuple[str, str]:
    """The registry name of pool ``name``'s manager: ``("otpy.pg.pool", name)``.

    A namespaced tuple, so a pool called ``"main"`` never collides with some
    other actor registered as ``"main"``.
    """
    return (_NAMESPACE, name)


def lookup(name: str) -> PoolCore:
    """The state of the running pool ``name`` in the current registry.

    Raises:
        PoolNotFound: no pool of that name runs (in this registry).
    """
    registry = current_registry()
    cached = _LOOKUPS.get(name)
    if cached is not None and cached[0] is registry and not cached[1].closed:
        return cached[1]
    ref = registry.whereis((_NAMESPACE, name))
    if ref is not None:
        core = _CORES.get(ref)
        if core is not None:
            _LOOKUPS[name] = (registry, core)
            return core
    raise PoolNotFound(
        f"no pool named {name!r} is running (start it with open_pool() or under a "
        f"supervisor with pool_spec(); check otpy.use_registry if it runs elsewhere)",
        name,
    )


class _Grow:
    def __repr__(self) -> str:
        return "grow"


_GROW: Final = _Grow()


class PoolManager(GenServer):
    """The pool manager actor: owns the pool state and starts on-demand workers.

    Callers do not send it messages for checkouts (see :mod:`otpy.pg.pool.core`
    for why); it runs the waiter-deadline timer and the leak sweep, and
    handles ``grow`` requests by starting workers under the on-demand
    supervisor.  When it exits, for whatever reason, the pool state is closed
    and waiters fail with :class:`~otpy.pg.pool.PoolClosed`.
    """

    def __init__(self, box: PoolBox) -> None:
        self._box = box

    def __repr__(self) -> str:
        return f"<PoolManager {self._box.name!r}>"

    async def init(self) -> None:
        """Create the pool state, make it findable, start the timers."""
        box = self._box
        ref = self.ref
        core = PoolCore(
            box.name, box.pool, box.database, request_grow=self._request_grow, timing=box.timing
        )
        self.core = core
        box.core = core
        box.manager = ref
        box.ephemeral = None
        for stale in [r for r in _CORES if not r.alive]:
            del _CORES[stale]
        for name in [n for n, (_, c) in _LOOKUPS.items() if c.closed]:
            del _LOOKUPS[name]
        _CORES[ref] = core
        self.start_soon(self._timer, name=f"pool {box.name!r} timer")
        if box.leak_check_interval is not None:
            self.start_soon(self._sweep, box.leak_check_interval, box.hold_warning)

    def _request_grow(self) -> None:
        cast(self.ref, _GROW)

    async def _timer(self) -> None:
        try:
            await self.core.run_timer()
        finally:
            # Runs however the manager exits (stop, crash, kill).
            self.core.close()
            _CORES.pop(self.ref, None)
            cached = _LOOKUPS.get(self._box.name)
            if cached is not None and cached[1] is self.core:
                del _LOOKUPS[self._box.name]

    async def _sweep(self, interval: float, hold_warning: float | None) -> None:
        while True:
            await trio.sleep(interval)
            self.core.reclaim_leaks()
            if hold_warning is not None:
                self.core.warn_long_holds(hold_warning)

    async def handle_cast(self, request: Any) -> None:
        """``grow``: start on-demand workers for the pending requests."""
        if request is _GROW:
            await self._grow()
        else:
            await super().handle_cast(request)

    async def _grow(self) -> None:
        core, box = self.core, self._box
        spec = ChildSpec(
            id="ephemeral",
            start=lambda: ConnectionWorker(box, ephemeral=True),
            restart=Restart.TEMPORARY,
        )
        while core.pending_grow > 0 and not core.closed:
            sup = box.ephemeral
            if sup is None or not sup.alive:
                return  # the on-demand supervisor sends `grow` again when it starts
            before = core.pending_grow
            try:
                await start_child(sup, spec)
            except (InitError, ActorExited, SupervisorError) as exc:
                logger.warning(
                    "pool %r: cannot start an on-demand connection worker: %s",
                    box.name,
                    exc,
                    extra={"event": "pool_grow_failed", "pool": box.name},
                )
                core.pending_grow = max(0, before - 1)


class _OnDemandSupervisor(DynamicSupervisor):
    """The DynamicSupervisor of on-demand workers; tells the manager it is ready."""

    def __init__(self, box: PoolBox) -> None:
        super().__init__(intensity=max(3, 2 * box.pool.max_size), period=5.0)
        self._box = box

    async def init(self) -> None:
        box = self._box
        box.ephemeral = self.ref
        if box.manager is not None:
            cast(box.manager, _GROW)


def make_pool_supervisor(
    name: str,
    pool: PoolConfig,
    database: DatabaseConfig,
    *,
    leak_check_interval: float | None = LEAK_CHECK_INTERVAL,
    timing: bool = True,
    hold_warning: float | None = None,
) -> Supervisor:
    """Build the supervisor of one pool (see the module docstring for the tree).

    ``timing`` and ``hold_warning``: see :func:`pool_spec`.
    """
    box = PoolBox(name, pool, database, leak_check_interval, timing, hold_warning)
    restart_backoff = pool.reconnect  # crashed workers restart at the reconnect pace
    stable = [
        ChildSpec(
            id=("connection", i),
            start=lambda: ConnectionWorker(box, ephemeral=False),
            backoff=restart_backoff,
        )
        for i in range(pool.min_size)
    ]
    children = [
        ChildSpec(id="manager", start=lambda: PoolManager(box), name=pool_key(name)),
        ChildSpec(
            id="stable_connections",
            start=lambda: Supervisor(stable, intensity=max(3, 2 * pool.min_size), period=5.0),
            type=ChildType.SUPERVISOR,
        ),
        ChildSpec(
            id="on_demand_connections",
            start=lambda: _OnDemandSupervisor(box),
            type=ChildType.SUPERVISOR,
        ),
    ]
    return Supervisor(children, strategy=Strategy.REST_FOR_ONE, intensity=3, period=5.0)


def check_tree_options(
    caller: str, leak_check_interval: float | None, timing: bool, hold_warning: float | None
) -> None:
    """Check the options of a pool's tree, as every way of running one takes them.

    :func:`pool_spec` and :func:`~otpy.pg.pool.open_pool` both pass them on to
    :func:`make_pool_supervisor`; errors name ``caller`` and the argument.

    Raises:
        ConfigError: an invalid option, naming it and its value.
    """
    check_seconds(
        leak_check_interval, f"{caller}(leak_check_interval)", optional=True, positive=True
    )
    check_bool(timing, f"{caller}(timing)")
    check_seconds(hold_warning, f"{caller}(hold_warning)", optional=True, positive=True)


def pool_spec(
    name: str,
    pool: PoolConfig,
    database: DatabaseConfig,
    *,
    leak_check_interval: float | None = LEAK_CHECK_INTERVAL,
    timing: bool = True,
    hold_warning: float | None = None,
) -> ChildSpec:
    """The child spec of pool ``name``, for the connector application's supervisor.

    Starting it starts the pool's tree and registers the pool under
    :func:`pool_key` in the current registry, so any task can then use
    ``otpy.pg.pool.query(name, ...)``.  The pool starts without waiting for
    its connections (they open in the background, and callers queue until
    they do), so an unreachable server does not prevent the application from
    starting.  Child id: ``("otpy.pg.pool", name)``.

    ``timing`` records when each connection is taken, for the hold-time
    histogram of :class:`~otpy.pg.pool.PoolStats` and for ``hold_warning``:
    a connection held longer than ``hold_warning`` seconds is logged once
    (``pool_connection_held_long``, with the holding task's stack) by the
    sweep that runs every ``leak_check_interval`` seconds.

    Raises:
        ConfigError: ``database`` names a missing file or an unknown service
            (see :meth:`DatabaseConfig.check`): reported now rather than by
            workers retrying a connection that cannot succeed.
    """
    check_tree_options("pool_spec", leak_check_interval, timing, hold_warning)
    database.check()
    return ChildSpec(
        id=pool_key(name),
        start=lambda: make_pool_supervisor(
            name,
            pool,
            database,
            leak_check_interval=leak_check_interval,
            timing=timing,
            hold_warning=hold_warning,
        ),
        type=ChildType.SUPERVISOR,
        restart=Restart.PERMANENT,
    )


@contextlib.asynccontextmanager
async def running_pool(
    name: str,
    pool: PoolConfig,
    database: DatabaseConfig,
    *,
    leak_check_interval: float | None = LEAK_CHECK_INTERVAL,
    timing: bool = True,
    hold_warning: float | None = None,
) -> AsyncIterator[Ref]:
    """Run pool ``name``'s tree in a nursery for the block; yield its supervisor's ref.

    An exception of the block reaches the caller as itself, not wrapped in
    the nursery's exception group (see :func:`otpy._util.raise_unwrapped`).
    """
    try:
        async with trio.open_nursery() as nursery:
            sup = make_pool_supervisor(
                name,
                pool,
                database,
                leak_check_interval=leak_check_interval,
                timing=timing,
                hold_warning=hold_warning,
            )
            ref = await start_actor(nursery, sup, link=True)
            try:
                yield ref
            finally:
                with trio.CancelScope(shield=True):
                    await stop_actor(ref, SHUTDOWN)
    except BaseExceptionGroup as group:
        raise_unwrapped(group)
