"""What the members of one pool tree share: :class:`PoolBox`.

The manager creates the pool state and puts it here; the workers, started
after it by the same supervisor, pick it up.  It lives in a module of its own
because both :mod:`otpy.pg.pool.manager` (which creates boxes and starts
workers) and :mod:`otpy.pg.pool.worker` (which reads them) need it: kept in
either, it would make the two import each other.
"""

from __future__ import annotations

import attrs

from otpy.actor import Ref
from otpy.pg.config import DatabaseConfig, PoolConfig
from otpy.pg.pool.core import PoolCore

__all__ = ["PoolBox"]


@attrs.define(eq=False)
class PoolBox:
    """What the members of one pool tree share: its configuration and current manager.

    Created afresh each time the pool's supervisor starts; the manager puts
    its :class:`~otpy.pg.pool.core.PoolCore` here and the workers started
    after it pick it up.  ``leak_check_interval``, ``timing`` and
    ``hold_warning`` are the options of :func:`~otpy.pg.pool.pool_spec`.
    """

    name: str
    pool: PoolConfig
    database: DatabaseConfig
    leak_check_interval: float | None
    timing: bool = True
    hold_warning: float | None = None
    core: PoolCore | None = None
    manager: Ref | None = None
    ephemeral: Ref | None = None
