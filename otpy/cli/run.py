"""``otpy run MODULE:APP --config FILE.toml``: run a user's application until stopped.

``MODULE:APP`` names an :class:`otpy.Application` (or a function returning
one), as ``uvicorn``/``gunicorn`` name their apps.  ``--config`` is a TOML file
with the connector's ``databases`` and ``pools`` tables, plus optional
``[env.APPNAME]`` tables that override applications' environments::

    [databases.main_db]
    host = "localhost"
    database = "shop"
    username = "shop"
    password_env = "SHOP_DB_PASSWORD"

    [pools.main_pool]
    database = "main_db"
    size = [2, 10]

    [env.myapp]
    batch_size = 100

When a configuration is given and the application does not already depend on
the connector, the connector is added as its dependency, so pools are up
before the application's own code starts.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

import attrs

from otpy.application import Application, start_order
from otpy.cli.errors import EXIT_NOT_FOUND, CliError
from otpy.pg.app import APP_NAME, connector_application
from otpy.pg.config import ConnectorConfig, read_toml
from otpy.pg.errors import ConfigError

__all__ = [
    "AppNotFound",
    "ApplicationStartFailed",
    "load_application",
    "load_run_config",
    "prepare",
]


class AppNotFound(CliError):
    """``MODULE:APP`` does not name an importable :class:`otpy.Application` (exit 66)."""

    code = EXIT_NOT_FOUND


class ApplicationStartFailed(CliError):
    """An application failed to start; ``code`` is the exit code of the error it failed with.

    :func:`otpy.run` only says *that* an application failed to start (exit 2);
    the CLI reports why, with the code that error has in any other command
    (69 for a server that cannot be reached, 78 for a missing pool...).
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def load_application(target: str) -> Application:
    """Import ``MODULE:APP`` and return the application it names.

    The current directory is importable, as with ``python -m``.

    Raises:
        AppNotFound: with what was wrong (format, module, attribute, type).
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise AppNotFound(f"expected MODULE:APP (e.g. myproject.main:app), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppNotFound(f"cannot import module {module_name!r}: {exc}") from exc
    try:
        value: Any = getattr(module, attr)
    except AttributeError:
        raise AppNotFound(f"module {module_name!r} has no attribute {attr!r}") from None
    if callable(value) and not isinstance(value, Application):
        value = value()
    if not isinstance(value, Application):
        raise AppNotFound(
            f"{target} is a {type(value).__name__}, not an otpy.Application "
            "(or a function returning one)"
        )
    return value


def load_run_config(path: str | os.PathLike[str]) -> tuple[ConnectorConfig, dict[str, Any]]:
    """Read ``--config``: the connector's configuration and the ``[env.*]`` overrides.

    Raises:
        ConfigError: unreadable file, invalid TOML, or invalid content (naming the key).
    """
    data = read_toml(path)
    envs = data.pop("env", {})
    if not isinstance(envs, Mapping) or not all(isinstance(v, Mapping) for v in envs.values()):
        raise ConfigError("env", "expected [env.APPNAME] tables")
    return ConnectorConfig.from_mapping(data), {k: dict(v) for k, v in envs.items()}


def prepare(
    app: Application, config_path: str | os.PathLike[str] | None
) -> tuple[Application, dict[str, Any]]:
    """The application to run and its environment overrides, given ``--config``."""
    if config_path is None:
        return app, {}
    config, envs = load_run_config(config_path)
    envs[APP_NAME] = {**envs.get(APP_NAME, {}), "config": config}
    if all(a.name != APP_NAME for a in start_order(app)):
        app = attrs.evolve(app, dependencies=(connector_application(config), *app.dependencies))
    return app, envs
