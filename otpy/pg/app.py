"""The connector as an :class:`otpy.Application`: configuration in, supervision tree out.

This is the counterpart of adding ``epg_connector`` to an Erlang release: list
the connector among your application's dependencies and it starts before your
code, one pool subtree per configured pool plus the dynamic supervisor that WAL
readers run under, and stops after it::

    import otpy
    from otpy.pg import app as pg_app

    connector = pg_app.connector_application("app.toml")   # databases + pools
    myapp = otpy.Application("myapp", start=my_root_spec, dependencies=[connector])
    otpy.run(myapp)

The tree (``one_for_one``, so one pool's trouble never restarts another, unlike
epg_connector's ``one_for_all`` with intensity 0)::

    otpy.pg (Supervisor, one_for_one)
    ├── ("otpy.pg.pool", "main_pool")   pool subtree: manager + connection workers
    ├── ("otpy.pg.pool", "readonly")    ...
    └── otpy.pg.wal_readers             DynamicSupervisor of WAL readers (subscribe())

The configuration lives in the application's environment under ``"config"``
(a :class:`~otpy.pg.config.ConnectorConfig`), so ``otpy run --config FILE``
can replace it, and ``wal_reader.subscribe(handler, "main_db", ...)`` finds
configured databases by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from otpy.application import Application
from otpy.child_spec import ChildSpec, ChildType
from otpy.pg.config import ConnectorConfig
from otpy.pg.errors import ConfigError
from otpy.pg.pool import pool_spec
from otpy.pg.wal_reader import CONNECTOR_APP, readers_supervisor_spec
from otpy.supervisor import Strategy, Supervisor

__all__ = [
    "APP_NAME",
    "ConfigSource",
    "connector_application",
    "connector_supervisor",
    "load_config",
]

#: The connector application's name, under which its environment is found
#: (``otpy.get_env(APP_NAME, "config")``) and its root supervisor is registered.
APP_NAME = CONNECTOR_APP

#: What :func:`load_config` accepts: a ready configuration, plain data, or a TOML file path.
ConfigSource = ConnectorConfig | Mapping[str, Any] | str | os.PathLike[str]


def load_config(source: ConfigSource | None) -> ConnectorConfig:
    """Turn any accepted configuration source into a validated :class:`ConnectorConfig`.

    ``None`` means "no pools" (an application may still use WAL readers with
    explicit connection options).  A string or path is a TOML file.

    Raises:
        ConfigError: the source is invalid (the message names the bad key).
    """
    if source is None:
        return ConnectorConfig()
    if isinstance(source, ConnectorConfig):
        return source
    if isinstance(source, Mapping):
        return ConnectorConfig.from_mapping(source)
    if isinstance(source, str | os.PathLike):
        return ConnectorConfig.from_toml(source)
    raise ConfigError(
        "config",
        f"expected a ConnectorConfig, a mapping or a TOML file path, got {type(source).__name__}",
    )


def connector_supervisor(config: ConnectorConfig) -> Supervisor:
    """The connector's root supervisor for ``config`` (what the application starts).

    Exposed for users who want the connector inside their own tree rather than
    as a separate application.  Pools start in configuration order, the WAL
    readers' supervisor last.  Its intensity is generous because each child is
    itself a supervisor that paces its own restarts (reconnect back-off).
    With a ``[metrics]`` table, the metrics endpoint (:mod:`otpy.pg.health`)
    starts after them.
    """
    children: list[ChildSpec] = [
        pool_spec(name, pool, config.databases[pool.database])
        for name, pool in config.pools.items()
    ]
    children.append(readers_supervisor_spec())
    if config.metrics is not None:
        from otpy.pg.health import metrics_server_spec  # imports the readers and pools

        children.append(metrics_server_spec(config.metrics))
    return Supervisor(children, strategy=Strategy.ONE_FOR_ONE, intensity=10, period=60.0)


def _start(env: Mapping[str, Any]) -> ChildSpec:
    config = load_config(env.get("config"))
    return ChildSpec(
        id=APP_NAME,
        start=lambda: connector_supervisor(config),
        name=APP_NAME,
        type=ChildType.SUPERVISOR,
    )


def connector_application(config: ConfigSource | None = None) -> Application:
    """The connector application, configured by ``config`` (overridable through its env).

    ``config`` is a :class:`ConnectorConfig`, a mapping with ``databases`` and
    ``pools`` tables, or the path of a TOML file with them.  It is loaded and
    validated here, so a bad file fails at once with a
    :class:`~otpy.pg.errors.ConfigError` naming the bad key, not later inside
    a running system.

    Raises:
        ConfigError: the configuration is invalid.
    """
    return Application(
        name=APP_NAME,
        start=_start,
        env={"config": load_config(config)},
        description="PostgreSQL pools and logical-replication readers (epg_connector)",
    )
