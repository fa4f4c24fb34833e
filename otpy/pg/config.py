"""The connector's configuration: databases and pools, validated when loaded.

This is what epg_connector keeps in ``sys.config``::

    {databases, #{main_db => #{host => ..., port => ..., database => ...,
                               username => ..., password => ...}}},
    {pools, #{main_pool => #{database => main_db, size => {20, 50}}}}

In otpy the same data is a :class:`ConnectorConfig` of frozen attrs classes,
loaded from a mapping (:meth:`ConnectorConfig.from_mapping`) or a TOML file
(:meth:`ConnectorConfig.from_toml`)::

    [databases.main_db]
    host = "127.0.0.1"
    port = 5432
    database = "myapp_production"
    username = "postgres"
    password_env = "MAIN_DB_PASSWORD"   # the secret stays out of the file

    [pools.main_pool]
    database = "main_db"
    size = [20, 50]                     # 20 stable + up to 30 ephemeral connections

Everything is checked at load time, so a typo fails the start of the
application with a message naming the exact key and value
(``pools.main_pool.database: unknown database 'maindb' (did you mean
'main_db'?)``) instead of failing later, in a pool worker, at the first query.
Unknown keys are rejected with a did-you-mean.  Durations are in seconds
(floats), not epg_connector's milliseconds.

Passwords are held in :class:`Secret`, which never shows its value in
``repr``/``str`` (so neither do the configs, logs or errors); only
:meth:`DatabaseConfig.connect_kwargs` reveals it, to hand it to libpq.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from otpy.child_spec import Backoff
from otpy.pg.errors import ConfigError

if TYPE_CHECKING:
    from psycopg.rows import TupleRow

    from otpy.pg.connection import TrioConnection

__all__ = [
    "SSL_MODES",
    "Backoff",
    "ConnectorConfig",
    "DatabaseConfig",
    "PoolConfig",
    "Secret",
    "read_toml",
]

#: The values libpq accepts for ``sslmode``.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

# libpq keyword -> the DatabaseConfig field that holds it (how DSNs are read).
_DSN_FIELDS = {
    "host": "host",
    "port": "port",
    "dbname": "database",
    "user": "username",
    "password": "password",
    "sslmode": "sslmode",
    "sslrootcert": "sslrootcert",
    "sslcert": "sslcert",
    "sslkey": "sslkey",
    "connect_timeout": "connect_timeout",
    "application_name": "application_name",
}
# libpq keywords that ``params`` refuses, and where they belong instead: those
# with a field of their own in DatabaseConfig, or that must not be given in clear.
_DEDICATED_PARAMS = {
    **_DSN_FIELDS,
    "hostaddr": "host",
    "password": "password or password_env",
    "passfile": "password or password_env",
    "replication": "replication_connect() (not a database setting)",
}

_REDACTED = "********"

#: libpq parameters whose values are secrets: redacted from ``repr(params)``.
_SECRET_PARAMS = frozenset({"sslpassword"})


def _params_repr(params: Mapping[str, str]) -> str:
    return repr({k: _REDACTED if k in _SECRET_PARAMS else v for k, v in params.items()})


T = TypeVar("T")


@attrs.frozen(repr=False)
class Secret:
    """A secret string (a password) that never shows itself in reprs, logs or errors.

    Call :meth:`reveal` at the one place the clear value is needed (handing it
    to libpq).  Equality compares the values, so configs stay comparable.
    """

    _value: str

    def reveal(self) -> str:
        """Return the clear value. Keep it out of logs and messages."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_REDACTED}')"

    def __str__(self) -> str:
        return _REDACTED


@attrs.frozen
class DatabaseConfig:
    """How to reach one PostgreSQL database (an entry of ``databases``).

    ``host`` may list several comma-separated hosts (libpq tries them in order).
    ``params`` holds any other libpq parameter (``target_session_attrs``,
    ``keepalives``, ``options``...), checked against libpq's keywords at load time.
    """

    name: str
    """The key of this entry in ``databases`` (what pools refer to)."""
    database: str
    """The database name on the server (libpq ``dbname``)."""
    username: str
    """The role to log in as (libpq ``user``)."""
    host: str = "localhost"
    """Host name(s), IP address(es) or a Unix socket directory."""
    port: int = 5432
    password: Secret | None = None
    """The password, redacted everywhere; ``None`` for password-less authentication."""
    password_env: str | None = None
    """The environment variable the password was read from, if any (for messages)."""
    sslmode: str | None = None
    """libpq ``sslmode`` (one of :data:`SSL_MODES`); libpq's default when ``None``."""
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    connect_timeout: float = 10.0
    """Seconds allowed for each connection attempt (per host address)."""
    application_name: str | None = None
    """Shown in ``pg_stat_activity``; helps operators find the connector's sessions."""
    params: Mapping[str, str] = attrs.field(factory=dict, repr=_params_repr)
    """Other libpq parameters, passed through as given (``sslpassword`` is redacted
    from the repr like the password)."""

    @classmethod
    def from_dsn(
        cls, name: str, dsn: str, *, environ: Mapping[str, str] | None = None
    ) -> DatabaseConfig:
        """A database from a libpq DSN (``"host=... dbname=..."`` or ``postgresql://...``).

        Tools and tests usually have a DSN rather than a configuration table;
        this keeps every libpq setting in it (unknown ones go to ``params``)
        and validates it exactly as a ``[databases.NAME]`` table.  In a
        configuration file, a database given as a string is read this way.
        ``user``/``dbname`` default as in libpq (the OS user, then the user).

        Raises:
            ConfigError: the DSN is malformed (the message never shows it, as
                it may hold a password) or holds an invalid setting.
        """
        return _database_from_dsn(name, dsn, f"databases.{name}", environ)

    def connect_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for :meth:`TrioConnection.connect`, password included.

        ``overrides`` are added last (e.g. ``autocommit=True``).  The result
        holds the clear password: pass it to ``connect`` and do not log it.
        """
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.database,
            "user": self.username,
            # libpq's minimum is 2 seconds, and it takes whole seconds.
            "connect_timeout": max(2, round(self.connect_timeout)),
        }
        if self.password is not None:
            kwargs["password"] = self.password.reveal()
        for key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "application_name"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = value
        kwargs.update(self.params)
        kwargs.update(overrides)
        return kwargs

    async def connect(self, **overrides: Any) -> TrioConnection[TupleRow]:
        """Open a :class:`~otpy.pg.connection.TrioConnection` to this database."""
        from otpy.pg.connection import TrioConnection

        return await TrioConnection.connect(**self.connect_kwargs(**overrides))

    def describe(self) -> str:
        """A one-line description safe for logs: ``user@host:port/database``."""
        return f"{self.username}@{self.host}:{self.port}/{self.database}"


@attrs.frozen
class PoolConfig:
    """A connection pool (an entry of ``pools``).

    ``min_size`` connections are kept open; up to ``max_size - min_size``
    more are opened on demand and closed when idle (epg_connector's
    "ephemeral" connections).  A size given as ``N`` means ``(N, N)``.
    """

    name: str
    """The key of this entry in ``pools``."""
    database: str
    """The name of the :class:`DatabaseConfig` this pool connects to."""
    min_size: int
    max_size: int
    checkout_timeout: float = 5.0
    """Seconds a caller waits for a connection before getting :class:`~otpy.pg.pool.PoolTimeout`."""
    max_waiting: int = 1000
    """Callers allowed to wait at once; more are refused at once (0 = nobody waits)."""
    max_lifetime: float | None = 3600.0
    """Seconds after which a connection is replaced when next idle; ``None``: never."""
    max_idle: float | None = 600.0
    """Seconds an on-demand connection may stay idle before it is closed; ``None``: never."""
    health_check_interval: float | None = 30.0
    """Seconds between checks of idle connections; ``None`` disables them."""
    reconnect: Backoff = attrs.field(factory=lambda: Backoff(jitter=0.1))
    """Back-off between attempts to re-open a lost connection."""

    @property
    def size(self) -> int | tuple[int, int]:
        """The size as configured: ``N`` for a fixed size, else ``(min, max)``."""
        return self.min_size if self.min_size == self.max_size else (self.min_size, self.max_size)


@attrs.frozen
class ConnectorConfig:
    """The whole connector configuration: ``databases`` and the ``pools`` using them."""

    databases: Mapping[str, DatabaseConfig] = attrs.field(factory=dict)
    pools: Mapping[str, PoolConfig] = attrs.field(factory=dict)

    def database_of(self, pool: str) -> DatabaseConfig:
        """The database configuration of pool ``pool``.

        Raises:
            KeyError: no such pool.
        """
        return self.databases[self.pools[pool].database]

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, environ: Mapping[str, str] | None = None
    ) -> ConnectorConfig:
        """Build and validate a configuration from plain data (e.g. parsed TOML/JSON).

        ``environ`` supplies the variables named by ``password_env``
        (default: :data:`os.environ`).

        Raises:
            ConfigError: the first problem found, naming its key path.
        """
        env = os.environ if environ is None else environ
        root = _mapping(data, "")
        _check_keys(root, "", ("databases", "pools"))
        databases = {
            # A database is a table of settings, or a DSN string.
            name: (
                _database_from_dsn(name, entry, f"databases.{name}", env)
                if isinstance(entry, str)
                else _database(name, _mapping(entry, f"databases.{name}"), f"databases.{name}", env)
            )
            for name, entry in _named_entries(root.get("databases", {}), "databases")
        }
        pools = {
            name: _pool(name, _mapping(entry, f"pools.{name}"), f"pools.{name}", databases)
            for name, entry in _named_entries(root.get("pools", {}), "pools")
        }
        return cls(databases=databases, pools=pools)

    @classmethod
    def from_toml(
        cls, path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
    ) -> ConnectorConfig:
        """Load and validate a TOML file (see the module docstring for its layout).

        Raises:
            ConfigError: the file cannot be read or parsed, or is invalid.
        """
        return cls.from_mapping(read_toml(path), environ=environ)

    @classmethod
    def from_toml_string(
        cls,
        text: str,
        *,
        environ: Mapping[str, str] | None = None,
        source: str = "<string>",
    ) -> ConnectorConfig:
        """Like :meth:`from_toml`, from TOML text (``source`` names it in errors)."""
        return cls.from_mapping(_parse_toml(text, source), environ=environ)


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and parse a TOML configuration file, without validating its content.

    For files that hold more than the connector's tables (``otpy run`` also
    reads ``[env.APP]`` tables from the same file).

    Raises:
        ConfigError: the file cannot be read or is not valid TOML.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as ex:
        raise ConfigError("", f"cannot read configuration file {str(file)!r}: {ex}") from None
    return _parse_toml(text, str(file))


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as ex:
        raise ConfigError("", f"{source} is not valid TOML: {ex}") from None


# --------------------------------------------------------------------------
# Validation helpers: each takes the dotted path of the value it checks.
# --------------------------------------------------------------------------


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a table/mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(path, f"keys must be strings, got {key!r}")
    return value


def _check_keys(entry: Mapping[str, Any], path: str, allowed: tuple[str, ...]) -> None:
    for key in entry:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            raise ConfigError(where, f"unknown key{_did_you_mean(key, allowed)}")


def _did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    return f"{_close_match(word, choices)}; expected one of: {', '.join(sorted(choices))}"


def _close_match(word: str, choices: tuple[str, ...] | list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _named_entries(value: object, path: str) -> list[tuple[str, object]]:
    section = _mapping(value, path)
    if not all(section):
        raise ConfigError(path, "names must not be empty")
    return list(section.items())


def _database_from_dsn(
    name: str, dsn: str, path: str, environ: Mapping[str, str] | None
) -> DatabaseConfig:
    import getpass

    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError:
        # psycopg's message quotes the DSN, which may hold a password.
        raise ConfigError(path, "not a valid libpq connection string or URL") from None
    entry: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        field = _DSN_FIELDS.get(key)
        if field is None:
            extra[key] = value
        elif field == "port":
            entry[field] = int(value) if str(value).isdigit() else value
        elif field == "connect_timeout":
            entry[field] = float(value) if str(value).replace(".", "", 1).isdigit() else value
        else:
            entry[field] = str(value)
    entry.setdefault("username", getpass.getuser())
    entry.setdefault("database", entry["username"])
    if extra:
        entry["params"] = extra
    return _database(name, entry, path, os.environ if environ is None else environ)


def _string(entry: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> str | None:
    if key not in entry:
        if required:
            raise ConfigError(f"{path}.{key}", "is required")
        return None
    value = entry[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}.{key}", f"expected a non-empty string, got {value!r}")
    return value


def _int(value: object, path: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"expected an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(path, f"must be {bound}, got {value!r}")
    return value


def _seconds(
    entry: Mapping[str, Any], key: str, path: str, default: float | None, *, optional: bool = False
) -> float | None:
    """A duration in seconds; with ``optional``, ``false`` disables it (``None``)."""
    if key not in entry:
        return default
    value = entry[key]
    where = f"{path}.{key}"
    if optional and (value is None or value is False):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        disabled = " (or false to disable)" if optional else ""
        raise ConfigError(where, f"expected a number of seconds{disabled}, got {value!r}")
    if value < 0 or value != value:
        raise ConfigError(where, f"must be a non-negative number of seconds, got {value!r}")
    return float(value)


def _database(
    name: str, entry: Mapping[str, Any], path: str, environ: Mapping[str, str]
) -> DatabaseConfig:
    fields = tuple(f.name for f in attrs.fields(DatabaseConfig) if f.name != "name")
    _check_keys(entry, path, fields)
    host = entry.get("host", "localhost")
    if isinstance(host, list | tuple):
        if not host or not all(isinstance(h, str) and h for h in host):
            raise ConfigError(f"{path}.host", f"expected host names, got {host!r}")
        host = ",".join(host)
    elif not isinstance(host, str) or not host:
        raise ConfigError(f"{path}.host", f"expected a host name or a list of them, got {host!r}")
    port = _int(entry.get("port", 5432), f"{path}.port", minimum=1, maximum=65535)
    database = _string(entry, "database", path, required=True)
    username = _string(entry, "username", path, required=True)
    assert database is not None and username is not None

    password: Secret | None = None
    password_env = _string(entry, "password_env", path)
    if "password" in entry:
        if password_env is not None:
            raise ConfigError(f"{path}.password", "give either password or password_env, not both")
        value = entry["password"]
        if not isinstance(value, str):
            # Never echo the value: it may be a mistyped password.
            raise ConfigError(f"{path}.password", f"expected a string, got {type(value).__name__}")
        password = Secret(value)
    elif password_env is not None:
        if password_env not in environ:
            raise ConfigError(
                f"{path}.password_env",
                f"environment variable {password_env!r} is not set (it must hold the password)",
            )
        password = Secret(environ[password_env])

    sslmode = _string(entry, "sslmode", path)
    if sslmode is not None and sslmode not in SSL_MODES:
        raise ConfigError(
            f"{path}.sslmode", f"unknown sslmode {sslmode!r}{_did_you_mean(sslmode, SSL_MODES)}"
        )
    connect_timeout = _seconds(entry, "connect_timeout", path, 10.0)
    assert connect_timeout is not None
    return DatabaseConfig(
        name=name,
        database=database,
        username=username,
        host=host,
        port=port,
        password=password,
        password_env=password_env,
        sslmode=sslmode,
        sslrootcert=_string(entry, "sslrootcert", path),
        sslcert=_string(entry, "sslcert", path),
        sslkey=_string(entry, "sslkey", path),
        connect_timeout=connect_timeout,
        application_name=_string(entry, "application_name", path),
        params=_libpq_params(entry.get("params", {}), f"{path}.params"),
    )


def _libpq_keywords() -> list[str]:
    from psycopg import pq

    return [opt.keyword.decode() for opt in pq.Conninfo.get_defaults()]


def _libpq_params(value: object, path: str) -> dict[str, str]:
    params = _mapping(value, path)
    keywords = _libpq_keywords()
    result: dict[str, str] = {}
    for key, raw in params.items():
        where = f"{path}.{key}"
        if key in _DEDICATED_PARAMS:
            raise ConfigError(where, f"set this with {_DEDICATED_PARAMS[key]} instead")
        if key not in keywords:
            raise ConfigError(where, f"not a libpq parameter{_did_you_mean(key, keywords)}")
        if isinstance(raw, bool):
            result[key] = "1" if raw else "0"
        elif isinstance(raw, str | int | float):
            result[key] = str(raw)
        else:
            raise ConfigError(where, f"expected a string or a number, got {raw!r}")
    return result


def _pool(
    name: str, entry: Mapping[str, Any], path: str, databases: Mapping[str, DatabaseConfig]
) -> PoolConfig:
    allowed = tuple(
        "size" if f.name == "min_size" else f.name
        for f in attrs.fields(PoolConfig)
        if f.name not in ("name", "max_size")
    )
    _check_keys(entry, path, allowed)
    database = _string(entry, "database", path, required=True)
    assert database is not None
    if database not in databases:
        known = list(databases)
        listed = ", ".join(sorted(known)) if known else "none"
        raise ConfigError(
            f"{path}.database",
            f"unknown database {database!r}{_close_match(database, known)}; "
            f"configured databases: {listed}",
        )
    if "size" not in entry:
        raise ConfigError(f"{path}.size", "is required (an integer, or [min, max])")
    min_size, max_size = _size(entry["size"], f"{path}.size")
    defaults = PoolConfig(name=name, database=database, min_size=1, max_size=1)
    checkout_timeout = _seconds(entry, "checkout_timeout", path, defaults.checkout_timeout)
    assert checkout_timeout is not None
    max_waiting = defaults.max_waiting
    if "max_waiting" in entry:
        max_waiting = _int(entry["max_waiting"], f"{path}.max_waiting", minimum=0)
    return PoolConfig(
        name=name,
        database=database,
        min_size=min_size,
        max_size=max_size,
        checkout_timeout=checkout_timeout,
        max_waiting=max_waiting,
        max_lifetime=_seconds(entry, "max_lifetime", path, defaults.max_lifetime, optional=True),
        max_idle=_seconds(entry, "max_idle", path, defaults.max_idle, optional=True),
        health_check_interval=_seconds(
            entry, "health_check_interval", path, defaults.health_check_interval, optional=True
        ),
        reconnect=_backoff(entry.get("reconnect", {}), f"{path}.reconnect"),
    )


def _size(value: object, path: str) -> tuple[int, int]:
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ConfigError(path, f"expected an integer or [min, max], got {value!r}")
        low = _int(value[0], f"{path}[0]", minimum=0)
        high = _int(value[1], f"{path}[1]", minimum=1)
        if low > high:
            raise ConfigError(path, f"min must not exceed max, got {list(value)!r}")
        return low, high
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"expected an integer or [min, max], got {value!r}")
    size = _int(value, path, minimum=1)
    return size, size


def _backoff(value: object, path: str) -> Backoff:
    entry = _mapping(value, path)
    _check_keys(entry, path, ("initial", "maximum", "multiplier", "jitter"))
    default = Backoff(jitter=0.1)
    initial = _seconds(entry, "initial", path, default.initial)
    maximum = _seconds(entry, "maximum", path, default.maximum)
    assert initial is not None and maximum is not None
    if maximum < initial:
        raise ConfigError(f"{path}.maximum", f"must be >= initial ({initial}), got {maximum!r}")
    multiplier = entry.get("multiplier", default.multiplier)
    if isinstance(multiplier, bool) or not isinstance(multiplier, int | float) or multiplier < 1:
        raise ConfigError(f"{path}.multiplier", f"expected a number >= 1, got {multiplier!r}")
    jitter = entry.get("jitter", default.jitter)
    if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter <= 1:
        raise ConfigError(f"{path}.jitter", f"expected a number between 0 and 1, got {jitter!r}")
    return Backoff(
        initial=initial, maximum=maximum, multiplier=float(multiplier), jitter=float(jitter)
    )
