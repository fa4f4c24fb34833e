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

A setting left out is left to libpq, exactly as for ``psql``: the service
file, then the ``PG*`` environment variables, then libpq's defaults (otpy
fills nothing in; see :func:`libpq_settings`).  What libpq would only refuse
when connecting (a missing certificate or password file, an unknown service)
is reported at load time too.

Passwords are held in :class:`Secret`, which never shows its value in
``repr``/``str`` (so neither do the configs, logs or errors); only
:meth:`DatabaseConfig.connect_kwargs` reveals it, to hand it to libpq.
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
import re
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

import attrs

from otpy._moved import warn_moved
from otpy.child_spec import Backoff
from otpy.errors import InvalidArgument
from otpy.pg.errors import ConfigError

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

    from otpy.pg.connection import TrioConnection

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "SSL_MODES",
    "Backoff",
    "ConnectorConfig",
    "DatabaseConfig",
    "MetricsConfig",
    "PoolConfig",
    "Secret",
    "check_bool",
    "check_seconds",
    "describe_params",
    "libpq_settings",
    "one_line",
    "read_toml",
    "redact",
    "redacted_error",
    "secrets_in",
]

#: Seconds per connection attempt when neither the configuration, the service
#: file nor ``$PGCONNECT_TIMEOUT`` says (see :meth:`DatabaseConfig.connect_kwargs`).
DEFAULT_CONNECT_TIMEOUT = 10.0

#: The values libpq accepts for ``sslmode``.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

# libpq keyword -> the DatabaseConfig field that holds it (how DSNs are read).
_DSN_FIELDS = {
    "host": "host",
    "port": "port",
    "dbname": "database",
    "user": "username",
    "password": "password",
    "passfile": "passfile",
    "service": "service",
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
    "password": "password or password_env",
    "replication": "replication_connect() (not a database setting)",
}

#: Configuration keys naming a file that must exist (checked when the
#: configuration is loaded; libpq would otherwise fail, or silently ignore a
#: missing ``passfile``, at every connection attempt).  ``sslrootcert=system``
#: is libpq's "use the system's CA store", not a file.
_FILE_KEYS = ("sslrootcert", "sslcert", "sslkey", "sslcrl", "passfile", "servicefile")

# ----------------------------------------------------------------------------
# Redaction: the one place that knows how a password can appear in a DSN.
# ----------------------------------------------------------------------------

_REDACTED = "********"

#: libpq parameters whose values are secrets.
_SECRET_PARAMS = frozenset({"password", "sslpassword"})

# ``password=value`` / ``sslpassword = 'quoted \' value'`` in a keyword/value DSN.
_KEYWORD_SECRET = re.compile(
    r"(?i)(?<![?&\w])((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s']\S*)"
)
# ``postgresql://user:password@host``: the password ends at the first ``@`` (as in libpq).
_URI_USERINFO = re.compile(r"(?i)(\bpostgres(?:ql)?://[^:@/\s]*:)([^@/\s]*)(@)")
# ``?password=value`` / ``&sslpassword=value`` in a URI's query string.
_URI_QUERY = re.compile(r"(?i)([?&](?:ssl)?password=)([^&#\s\"']*)")


def secrets_in(*sources: object) -> set[str]:
    """The secret values ``sources`` hold, for :func:`redact`.

    A source is a DSN (keyword/value or URI, even malformed: the password is
    found the way a reader would), a parameter mapping (``password``,
    ``sslpassword``, or a ``conninfo``/``dsn`` string), or a :class:`Secret`
    (a value known to be secret, e.g. ``$PGPASSWORD``).  Anything else holds
    none.
    """
    found: set[str] = set()
    for source in sources:
        if isinstance(source, Secret):
            found.add(source.reveal())
        elif isinstance(source, Mapping):
            for key, value in source.items():
                if key in _SECRET_PARAMS and value is not None:
                    found.update(secrets_in(value) if isinstance(value, Secret) else {str(value)})
                elif key in ("conninfo", "dsn") and isinstance(value, str):
                    found.update(secrets_in(value))
        elif isinstance(source, str):
            for match in _KEYWORD_SECRET.finditer(source):
                raw = match[2]
                found.add(raw)
                if raw.startswith("'"):
                    found.add(re.sub(r"\\(.)", r"\1", raw.strip("'")))
            for match in itertools.chain(
                _URI_USERINFO.finditer(source), _URI_QUERY.finditer(source)
            ):
                found.update((match[2], unquote(match[2])))
    return {value for value in found if value}


#: Secrets shorter than this are replaced only as whole words: a two-letter
#: password would otherwise blank out every word that contains its letters.
_SHORT_SECRET = 4


def redact(text: str, *sources: object, marker: str = _REDACTED) -> str:
    """``text`` with every password removed, for messages, logs and reprs.

    psycopg and libpq quote a malformed DSN whole in their error messages
    (``invalid ... in URI: "postgresql://u:secret@[host..."``), and a traceback
    prints those messages.  Every place otpy parses a DSN or connects passes
    the message through here, with the DSN or parameters it used as
    ``sources``, and so does the command line for everything it prints:
    ``password=...`` / ``sslpassword=...`` values, the password of a URI's
    user info or query string, and any secret value found in ``sources``
    (:func:`secrets_in`: a DSN, even malformed, a parameter mapping or a
    :class:`Secret`) are replaced by ``marker`` wherever they occur (values
    shorter than four characters only as whole words).
    """
    text = _KEYWORD_SECRET.sub(lambda m: m[1] + marker, text)
    text = _URI_USERINFO.sub(lambda m: m[1] + marker + m[3], text)
    text = _URI_QUERY.sub(lambda m: m[1] + marker, text)
    for secret in sorted(secrets_in(*sources), key=len, reverse=True):
        if len(secret) >= _SHORT_SECRET:
            text = text.replace(secret, marker)
        else:
            text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", marker, text)
    return text


def redacted_error(ex: psycopg.Error, *sources: object) -> psycopg.Error:
    """A psycopg error of the same class as ``ex``, its message on one line without any password.

    For the errors psycopg and libpq raise on a conninfo they refuse: their
    messages may quote the DSN whole.  Raise the result *outside* the
    ``except`` block that caught ``ex``: raised inside, it would keep ``ex``
    (and the DSN its message quotes) as its context.
    """
    return type(ex)(redact(one_line(str(ex)), *sources))


def one_line(text: object) -> str:
    """``text`` with every run of whitespace made one space.

    libpq messages span several lines; log lines, errors and the command
    line's one-line reports should not.
    """
    return " ".join(str(text).split())


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


# ----------------------------------------------------------------------------
# What libpq makes of a set of parameters (service file, environment, defaults)
# ----------------------------------------------------------------------------

# The probe's trigger: a value libpq refuses once it has applied the service
# file, the environment and its defaults, but before it opens any socket.
_PROBE_KEY = "channel_binding"
_PROBE_VALUE = "otpy-probe"


def libpq_settings(params: Mapping[str, Any]) -> dict[str, str]:
    """The parameters libpq itself would connect with, for ``params``.

    libpq gives each parameter the first value found in: ``params``, the
    service file entry (``service``, or ``$PGSERVICE``), the ``PG*``
    environment variable, its compiled-in default (``user`` defaults to the OS
    user and ``dbname`` to the user).  Rather than re-implement that (and its
    service-file format and search path), libpq is asked: ``PQconnectStart``
    is given ``params`` plus a ``channel_binding`` value it refuses after
    applying every default and before opening any socket, and ``PQconninfo``
    then reports what it resolved.  No I/O beyond reading the service and
    password files, as any connection would.

    Passwords are left out of the result; ``channel_binding`` too (it is the
    probe's trigger).

    Raises:
        psycopg.OperationalError: libpq refuses ``params`` (unknown service,
            missing service file, host and port counts that do not match, a
            malformed value), with libpq's message, redacted.
    """
    import psycopg
    from psycopg import pq
    from psycopg.conninfo import make_conninfo

    probe = {k: v for k, v in params.items() if v is not None and k != _PROBE_KEY}
    probe[_PROBE_KEY] = _PROBE_VALUE
    problem = None
    try:
        conninfo = make_conninfo("", **probe)
    except psycopg.Error as ex:
        problem = redact(one_line(str(ex)), params)  # raised below, unchained
    if problem is not None:
        raise psycopg.OperationalError(problem)
    pgconn = pq.PGconn.connect_start(conninfo.encode())
    try:
        message = one_line(pgconn.error_message.decode("utf-8", "replace"))
        options = {
            opt.keyword.decode(): opt.val.decode("utf-8", "replace")
            for opt in pgconn.info
            if opt.val is not None
        }
    finally:
        pgconn.finish()
    if _PROBE_VALUE not in message:
        raise psycopg.OperationalError(redact(message, params) or "libpq refused the parameters")
    for key in (*_SECRET_PARAMS, _PROBE_KEY):
        options.pop(key, None)
    return options


def describe_params(params: Mapping[str, Any]) -> str:
    """``user@host:port/dbname`` as libpq would connect with ``params``; never a password.

    For logs and messages: the values are libpq's (service file, ``PG*``
    environment, defaults), so the description says where a connection really
    goes.  Parameters libpq refuses are described from ``params`` alone.
    """
    try:
        settings = libpq_settings(params)
    except Exception:
        settings = {k: str(v) for k, v in params.items() if k not in _SECRET_PARAMS}
    host = settings.get("host") or settings.get("hostaddr") or "(default)"
    return (
        f"{settings.get('user') or '?'}@{host}:{settings.get('port') or '(default)'}"
        f"/{settings.get('dbname') or '?'}"
    )


@attrs.frozen
class DatabaseConfig:
    """How to reach one PostgreSQL database (an entry of ``databases``).

    Every setting is optional and, when absent, is left to libpq, which takes
    it from the service file (``service``, or ``$PGSERVICE``), then its ``PG*``
    environment variable (``PGHOST``, ``PGPORT``, ``PGUSER``,
    ``PGDATABASE``, ``PGPASSWORD``, ``PGPASSFILE``, ``PGSSLMODE``...), then
    its defaults: otpy fills in nothing, so a configuration means what the
    same settings mean to ``psql``.  ``host`` may list several
    comma-separated hosts, and ``port`` one port or one per host (libpq tries
    them in order).  ``params`` holds any other libpq parameter
    (``target_session_attrs``, ``keepalives``, ``options``...), checked
    against libpq's keywords at load time.

    The values are checked when the object is built, whether by the loader
    or directly (:class:`~otpy.pg.errors.ConfigError` naming the field).
    """

    name: str
    """The key of this entry in ``databases`` (what pools refer to)."""
    database: str | None = None
    """The database name on the server (libpq ``dbname``); libpq's default when ``None``."""
    username: str | None = None
    """The role to log in as (libpq ``user``); libpq's default when ``None``."""
    host: str | None = None
    """Host name(s), IP address(es) or a Unix socket directory; libpq's default when ``None``."""
    port: int | tuple[int, ...] | None = None
    """The port, or one port per host; libpq's default when ``None``."""
    password: Secret | None = None
    """The password, redacted everywhere; ``None``: libpq's (``PGPASSWORD``, the password file)."""
    password_env: str | None = None
    """The environment variable the password was read from, if any (for messages)."""
    passfile: str | None = None
    """libpq ``passfile``: the password file to use (must exist)."""
    service: str | None = None
    """libpq ``service``: the service-file entry providing the settings not given here."""
    sslmode: str | None = None
    """libpq ``sslmode`` (one of :data:`SSL_MODES`); libpq's default when ``None``."""
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    connect_timeout: float | None = None
    """Seconds allowed for each connection attempt (per host address); ``None``:
    libpq's (the service file, ``PGCONNECT_TIMEOUT``), else :data:`DEFAULT_CONNECT_TIMEOUT`."""
    application_name: str | None = None
    """Shown in ``pg_stat_activity``; helps operators find the connector's sessions."""
    params: Mapping[str, str] = attrs.field(factory=dict, repr=_params_repr)
    """Other libpq parameters, passed through as given (``sslpassword`` is redacted
    from the repr like the password)."""

    def __attrs_post_init__(self) -> None:
        _check_database(attrs.asdict(self, recurse=False), type(self).__name__)

    @classmethod
    def from_dsn(
        cls,
        name: str,
        dsn: str,
        *,
        environ: Mapping[str, str] | None = None,
        ignore: Collection[str] = (),
        path: str | None = None,
    ) -> DatabaseConfig:
        """A database from a libpq DSN (``"host=... dbname=..."`` or ``postgresql://...``).

        Tools and tests usually have a DSN rather than a configuration table;
        this keeps every libpq setting in it (unknown ones go to ``params``)
        and validates it exactly as a ``[databases.NAME]`` table.  In a
        configuration file, a database given as a string is read this way.
        Settings the DSN leaves out stay to libpq (service file, ``PG*``
        environment, defaults), as for any libpq client.  Keywords in
        ``ignore`` are dropped (epg_connector's ``DbOpts`` carry
        ``replication``, which otpy sets itself).  ``path`` is where errors
        say the DSN came from (default ``databases.NAME``).

        Raises:
            ConfigError: the DSN is malformed (the message never shows a
                password) or holds an invalid setting.
        """
        where = f"databases.{name}" if path is None else path
        return _database_from_dsn(name, dsn, where, environ, ignore)

    def check(self, path: str | None = None) -> None:
        """Report now what libpq would only report when connecting.

        The configuration loaders call it; so do :func:`~otpy.pg.pool.open_pool`
        and :func:`~otpy.pg.pool.pool_spec` for a configuration built in code.
        Files the configuration names (``sslrootcert``, ``sslcert``,
        ``sslkey``, ``passfile``, ``params.sslcrl``, ``params.servicefile``)
        must exist; the service (``service``, or ``$PGSERVICE``) must be
        defined in the service file, which must exist; and libpq must accept
        the settings (host and port counts, for instance).  Otherwise a pool
        would retry a connection that can never succeed, for ever.

        Raises:
            ConfigError: naming the key (under ``path``, default
                ``databases.NAME``) and the file or libpq's reason.
        """
        _check_libpq(self, f"databases.{self.name}" if path is None else path)

    def libpq_params(self) -> dict[str, Any]:
        """The libpq parameters this configuration sets, password included (no defaults added)."""
        kwargs: dict[str, Any] = {}
        for key, field in _DSN_FIELDS.items():
            value = getattr(self, field)
            if value is None:
                continue
            if isinstance(value, Secret):
                value = value.reveal()
            elif key == "port" and isinstance(value, tuple):
                value = ",".join(str(port) for port in value)
            elif key == "connect_timeout":
                # libpq takes whole seconds, 2 at least (0: no limit).
                value = 0 if value == 0 else max(2, round(value))
            kwargs[key] = value
        kwargs.update(self.params)
        return kwargs

    def connect_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for :meth:`TrioConnection.connect`, password included.

        Only the settings given are included (libpq supplies the others from
        the service file, the environment and its defaults), with one
        exception: when neither this configuration, ``$PGCONNECT_TIMEOUT`` nor
        the service sets ``connect_timeout``, it is
        :data:`DEFAULT_CONNECT_TIMEOUT` rather than libpq's "wait for ever"
        (psycopg's 130 s), so that a pool or a reader notices a silent host
        soon.  ``overrides`` are added last (e.g. ``autocommit=True``).  The
        result holds the clear password: pass it to ``connect`` and do not
        log it.
        """
        kwargs = self.libpq_params()
        if "connect_timeout" not in kwargs and "connect_timeout" not in overrides:
            try:
                resolved = libpq_settings(kwargs).get("connect_timeout")
            except Exception:
                resolved = None  # connecting will report what libpq refuses
            if not resolved:
                kwargs["connect_timeout"] = round(DEFAULT_CONNECT_TIMEOUT)
        return {**kwargs, **overrides}

    async def connect(self, **overrides: Any) -> TrioConnection[TupleRow]:
        """Deprecated: ``TrioConnection.connect(**database.connect_kwargs())`` instead.

        The configuration layer sits below the connection; this shortcut made
        the two import each other.
        """
        warn_moved(
            "DatabaseConfig.connect()",
            "TrioConnection.connect(**database.connect_kwargs())",
            stacklevel=2,
        )
        from otpy.pg.connection import TrioConnection  # the one circle, until 0.2

        return await TrioConnection.connect(**self.connect_kwargs(**overrides))

    def describe(self) -> str:
        """A one-line description safe for logs: ``user@host:port/database``.

        The values are those libpq connects with (see :func:`describe_params`).
        """
        return describe_params(self.libpq_params())


@attrs.frozen
class PoolConfig:
    """A connection pool (an entry of ``pools``).

    ``min_size`` connections are kept open; up to ``max_size - min_size``
    more are opened on demand and closed when idle (epg_connector's
    "ephemeral" connections).  A size given as ``N`` means ``(N, N)``.

    The values are checked when the object is built, whether by the loader
    or directly (:class:`~otpy.pg.errors.ConfigError` naming the field and
    the value): sizes are integers with ``min_size <= max_size``, durations
    finite non-negative numbers of seconds (``health_check_interval`` above
    zero), never booleans or strings.
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

    def __attrs_post_init__(self) -> None:
        _check_pool(attrs.asdict(self, recurse=False), type(self).__name__)

    @property
    def size(self) -> int | tuple[int, int]:
        """The size as configured: ``N`` for a fixed size, else ``(min, max)``."""
        return self.min_size if self.min_size == self.max_size else (self.min_size, self.max_size)


@attrs.frozen
class MetricsConfig:
    """The ``[metrics]`` table: where :mod:`otpy.pg.health` serves ``/metrics`` and probes.

    Local by default: the endpoint has no authentication, so exposing it
    beyond the host (``host = "0.0.0.0"``) is a deliberate choice.
    """

    port: int = 9187
    """TCP port (0 picks a free one)."""
    host: str = "127.0.0.1"
    """Address to bind."""


@attrs.frozen
class ConnectorConfig:
    """The whole connector configuration: ``databases``, the ``pools`` using them, ``metrics``."""

    databases: Mapping[str, DatabaseConfig] = attrs.field(factory=dict)
    pools: Mapping[str, PoolConfig] = attrs.field(factory=dict)
    metrics: MetricsConfig | None = None
    """The metrics endpoint, served by the connector application when set."""

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
        _check_keys(root, "", ("databases", "pools", "metrics"))
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
        metrics = _metrics(root["metrics"], "metrics") if "metrics" in root else None
        return cls(databases=databases, pools=pools, metrics=metrics)

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
    name: str,
    dsn: str,
    path: str,
    environ: Mapping[str, str] | None,
    ignore: Collection[str] = (),
) -> DatabaseConfig:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    if not isinstance(dsn, str):
        raise ConfigError(path, f"expected a DSN string, got {type(dsn).__name__}")
    problem = None
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error as ex:
        # psycopg's message may quote the whole DSN, password included; and
        # raised outside the handler, the error has no context holding it.
        problem = redact(one_line(str(ex)), dsn)
    if problem is not None:
        raise ConfigError(path, f"not a valid libpq connection string or URL: {problem}")
    entry: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in params.items():
        if value is None or key in ignore:
            continue
        field = _DSN_FIELDS.get(key)
        text = str(value)
        if field is None:
            extra[key] = value
        elif field == "port":
            ports = text.split(",")
            numbers = [int(p) if p.strip().isdigit() else p for p in ports]
            entry[field] = numbers[0] if len(numbers) == 1 else numbers
        elif field == "connect_timeout":
            try:
                entry[field] = float(text)
            except ValueError:
                entry[field] = text
        else:
            entry[field] = text
    if extra:
        entry["params"] = extra
    return _database(name, entry, path, os.environ if environ is None else environ)


def _string(entry: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> str | None:
    if key not in entry:
        if required:
            raise ConfigError(f"{path}.{key}", "is required")
        return None
    return _text(entry[key], f"{path}.{key}")


def _text(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, f"expected a non-empty string, got {value!r}")
    return value


def _int(value: object, path: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"expected an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(path, f"must be {bound}, got {value!r}")
    return value


def check_seconds(
    value: object, path: str, *, optional: bool = False, positive: bool = False
) -> float | None:
    """Check a duration option where it enters otpy; return it as a float.

    A duration is an ``int`` or ``float`` (never a ``bool`` or a string),
    finite, and ``>= 0`` (``> 0`` with ``positive``); with ``optional``,
    ``None`` (and ``False`` in configuration files) means "disabled".  The
    configuration loader, :class:`PoolConfig`, :class:`DatabaseConfig` and
    :func:`otpy.pg.pool.open_pool` all check their durations here, so they
    accept and refuse the same values.

    Raises:
        ConfigError: naming ``path`` and the value.
    """
    if optional and (value is None or value is False):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        disabled = " (or None/false to disable)" if optional else ""
        raise ConfigError(path, f"expected a number of seconds{disabled}, got {value!r}")
    if not math.isfinite(value):
        disabled = "; use None/false to disable it" if optional else ""
        raise ConfigError(path, f"must be a finite number of seconds, got {value!r}{disabled}")
    if value < 0 or (positive and value == 0):
        kind = "a positive" if positive else "a non-negative"
        raise ConfigError(path, f"must be {kind} number of seconds, got {value!r}")
    return float(value)


def check_bool(value: object, path: str) -> bool:
    """Check a boolean option: ``True`` or ``False`` only (the string ``"false"`` is an error).

    Raises:
        ConfigError: naming ``path`` and the value.
    """
    if not isinstance(value, bool):
        raise ConfigError(path, f"expected true or false, got {value!r}")
    return value


def _seconds(
    entry: Mapping[str, Any],
    key: str,
    path: str,
    default: float | None,
    *,
    optional: bool = False,
    positive: bool = False,
) -> float | None:
    """A duration in seconds; with ``optional``, ``false`` disables it (``None``)."""
    if key not in entry:
        return default
    return check_seconds(entry[key], f"{path}.{key}", optional=optional, positive=positive)


def _port(value: object, path: str) -> int | tuple[int, ...]:
    """A port, or one port per host (a list, or a tuple once normalised)."""
    if isinstance(value, list | tuple):
        if not value:
            raise ConfigError(path, "expected a port or a list of ports, got an empty list")
        return tuple(
            _int(port, f"{path}[{i}]", minimum=1, maximum=65535) for i, port in enumerate(value)
        )
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            path, f"expected an integer, got {value!r} (or a list of integers, one per host)"
        )
    return _int(value, path, minimum=1, maximum=65535)


def _check_database(values: Mapping[str, Any], path: str) -> None:
    """Check the (normalised) fields of a :class:`DatabaseConfig`."""
    text_fields = ("database", "username", "host", "password_env", "service", "sslmode")
    for key in (*text_fields, "application_name", *_FILE_KEYS):
        if values.get(key) is not None:
            _text(values[key], f"{path}.{key}")
    if values.get("port") is not None:
        ports = _port(values["port"], f"{path}.port")
        hosts = str(values.get("host") or "").split(",")
        if isinstance(ports, tuple) and len(ports) > 1 and len(ports) != len(hosts):
            raise ConfigError(
                f"{path}.port",
                f"{len(ports)} ports for {len(hosts)} host(s) {values.get('host')!r}: give one "
                f"port, or one per host",
            )
    password = values.get("password")
    if password is not None and not isinstance(password, Secret):
        # Never echo the value: it may be a mistyped password.
        raise ConfigError(f"{path}.password", f"expected a Secret, got {type(password).__name__}")
    sslmode = values.get("sslmode")
    if sslmode is not None and sslmode not in SSL_MODES:
        raise ConfigError(
            f"{path}.sslmode", f"unknown sslmode {sslmode!r}{_did_you_mean(sslmode, SSL_MODES)}"
        )
    if values.get("connect_timeout") is not None:
        check_seconds(values["connect_timeout"], f"{path}.connect_timeout")
    params = values.get("params", {})
    _mapping(params, f"{path}.params")
    for key, value in params.items():
        if not isinstance(value, str):
            shown = _REDACTED if key in _SECRET_PARAMS else repr(value)
            raise ConfigError(f"{path}.params.{key}", f"expected a string, got {shown}")


def _check_libpq(db: DatabaseConfig, path: str) -> None:
    """What libpq would only report when connecting, reported at load time (see ``check``).

    Files named by the configuration must exist (libpq silently ignores a
    missing ``passfile``, and fails every attempt on a missing certificate,
    which a pool would retry for ever); the service must exist in the
    service file, and libpq must accept the settings (``libpq_settings``).
    """
    import psycopg

    explicit = db.libpq_params()
    for key in _FILE_KEYS:
        value = explicit.get(key)
        if value is None or (key == "sslrootcert" and value == "system"):
            continue
        where = f"{path}.{key}" if key in _DSN_FIELDS else f"{path}.params.{key}"
        file = Path(value).expanduser()
        if not file.is_file():
            problem = "is a directory, not a file" if file.is_dir() else "does not exist"
            raise ConfigError(where, f"file {value!r} {problem}")
    try:
        libpq_settings(explicit)
    except psycopg.Error as ex:
        message = str(ex)
        if "service" in message:
            where = f"{path}.service" if "service" in explicit else path
            source = (
                "" if "service" in explicit else " (PGSERVICE / PGSERVICEFILE in the environment)"
            )
            raise ConfigError(where, f"{message}{source}") from None
        raise ConfigError(path, f"libpq refuses these settings: {message}") from None


def _database(
    name: str, entry: Mapping[str, Any], path: str, environ: Mapping[str, str]
) -> DatabaseConfig:
    fields = tuple(f.name for f in attrs.fields(DatabaseConfig) if f.name != "name")
    _check_keys(entry, path, fields)
    values: dict[str, Any] = {
        key: _string(entry, key, path)
        for key in fields
        if key not in ("host", "port", "password", "connect_timeout", "params")
    }
    if "host" in entry:
        host = entry["host"]
        if isinstance(host, list | tuple):
            if not host or not all(isinstance(h, str) and h for h in host):
                raise ConfigError(f"{path}.host", f"expected host names, got {host!r}")
            host = ",".join(host)
        elif not isinstance(host, str) or not host:
            raise ConfigError(
                f"{path}.host", f"expected a host name or a list of them, got {host!r}"
            )
        values["host"] = host
    if "port" in entry:
        values["port"] = _port(entry["port"], f"{path}.port")

    password_env = values["password_env"]
    if "password" in entry:
        if password_env is not None:
            raise ConfigError(f"{path}.password", "give either password or password_env, not both")
        value = entry["password"]
        if not isinstance(value, str):
            # Never echo the value: it may be a mistyped password.
            raise ConfigError(f"{path}.password", f"expected a string, got {type(value).__name__}")
        values["password"] = Secret(value)
    elif password_env is not None:
        if password_env not in environ:
            raise ConfigError(
                f"{path}.password_env",
                f"environment variable {password_env!r} is not set (it must hold the password)",
            )
        values["password"] = Secret(environ[password_env])
    values["connect_timeout"] = _seconds(entry, "connect_timeout", path, None)
    values["params"] = _libpq_params(entry.get("params", {}), f"{path}.params")
    _check_database(values, path)
    db = DatabaseConfig(name=name, **values)
    db.check(path)
    return db


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
        elif isinstance(raw, str | int) or (isinstance(raw, float) and math.isfinite(raw)):
            result[key] = str(raw)
        else:
            shown = _REDACTED if key in _SECRET_PARAMS else repr(raw)
            raise ConfigError(where, f"expected a string or a finite number, got {shown}")
    return result


def _check_pool(values: Mapping[str, Any], path: str) -> None:
    """Check the fields of a :class:`PoolConfig` (the loader checks ``size`` first)."""
    _text(values["database"], f"{path}.database")
    low = _int(values["min_size"], f"{path}.min_size", minimum=0)
    high = _int(values["max_size"], f"{path}.max_size", minimum=1)
    if low > high:
        raise ConfigError(f"{path}.min_size", f"must not exceed max_size ({high}), got {low}")
    check_seconds(values["checkout_timeout"], f"{path}.checkout_timeout")
    _int(values["max_waiting"], f"{path}.max_waiting", minimum=0)
    check_seconds(values["max_lifetime"], f"{path}.max_lifetime", optional=True)
    check_seconds(values["max_idle"], f"{path}.max_idle", optional=True)
    check_seconds(
        values["health_check_interval"],
        f"{path}.health_check_interval",
        optional=True,
        positive=True,
    )
    backoff = values["reconnect"]
    if not isinstance(backoff, Backoff):  # a Backoff checks its own fields when built
        raise ConfigError(f"{path}.reconnect", f"expected a Backoff, got {backoff!r}")


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
    values: dict[str, Any] = {
        "name": name,
        "database": database,
        "min_size": min_size,
        "max_size": max_size,
        "checkout_timeout": _seconds(entry, "checkout_timeout", path, defaults.checkout_timeout),
        "max_waiting": defaults.max_waiting,
        "max_lifetime": _seconds(entry, "max_lifetime", path, defaults.max_lifetime, optional=True),
        "max_idle": _seconds(entry, "max_idle", path, defaults.max_idle, optional=True),
        "health_check_interval": _seconds(
            entry,
            "health_check_interval",
            path,
            defaults.health_check_interval,
            optional=True,
            positive=True,
        ),
        "reconnect": _backoff(entry.get("reconnect", {}), f"{path}.reconnect"),
    }
    if "max_waiting" in entry:
        values["max_waiting"] = _int(entry["max_waiting"], f"{path}.max_waiting", minimum=0)
    _check_pool(values, path)
    return PoolConfig(**values)


def _metrics(value: object, path: str) -> MetricsConfig:
    entry = _mapping(value, path)
    _check_keys(entry, path, ("port", "host"))
    default = MetricsConfig()
    port = _int(entry.get("port", default.port), f"{path}.port", minimum=0, maximum=65535)
    host = _text(entry["host"], f"{path}.host") if "host" in entry else default.host
    return MetricsConfig(port=port, host=host)


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
    try:  # Backoff checks its fields itself: one rule, reported under the key path
        return Backoff(
            initial=entry.get("initial", default.initial),
            maximum=entry.get("maximum", default.maximum),
            multiplier=entry.get("multiplier", default.multiplier),
            jitter=entry.get("jitter", default.jitter),
        )
    except InvalidArgument as exc:
        field = exc.option.rpartition(".")[2]
        raise ConfigError(
            f"{path}.{field}", f"expected {exc.expected}, got {exc.value!r}"
        ) from None
