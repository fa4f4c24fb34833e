"""Configurations mean what they mean to libpq: environment, service files, multi-host, files.

Every test connects for real to the test server, with the server's address
given only where the test says (``PG*`` variables, a service file), never
filled in by otpy.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from otpy.pg import pool
from otpy.pg.config import ConnectorConfig, DatabaseConfig, PoolConfig
from otpy.pg.connection import TrioConnection
from otpy.pg.errors import ConfigError

LIBPQ_ENV = (
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSSLMODE",
    "PGCONNECT_TIMEOUT",
    "PGAPPNAME",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No libpq variable from the machine running the tests."""
    for name in LIBPQ_ENV:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


@pytest.fixture
def server(module_dsn: str) -> dict[str, str]:
    params = conninfo_to_dict(module_dsn)
    return {k: str(v) for k, v in params.items() if v is not None}


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def where(db: DatabaseConfig) -> tuple[Any, ...]:
    async with await TrioConnection.connect(**db.connect_kwargs(autocommit=True)) as conn:
        cur = await conn.execute("SELECT current_database(), current_user, inet_server_port()")
        row = await cur.fetchone()
        assert row is not None
        return (*row, conn.info.password)


async def test_absent_keys_come_from_the_libpq_environment(
    server: dict[str, str], clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("PGHOST", server["host"])
    clean_env.setenv("PGPORT", server["port"])
    clean_env.setenv("PGUSER", server["user"])
    clean_env.setenv("PGDATABASE", server["dbname"])
    clean_env.setenv("PGPASSWORD", "from-the-environment")
    config = ConnectorConfig.from_mapping(
        {"databases": {"d": {}}, "pools": {"p": {"database": "d", "size": 1}}}
    )
    db = config.databases["d"]
    assert db.libpq_params() == {}  # otpy fills nothing in...
    assert db.connect_kwargs() == {"connect_timeout": 10}  # ...but a bounded attempt
    assert await where(db) == (
        server["dbname"],
        server["user"],
        int(server["port"]),
        "from-the-environment",
    )
    assert db.describe() == f"{server['user']}@{server['host']}:{server['port']}/{server['dbname']}"
    # An explicit key still wins over the environment.
    clean_env.setenv("PGPORT", str(closed_port()))
    explicit = ConnectorConfig.from_mapping({"databases": {"d": {"port": int(server["port"])}}})
    assert (await where(explicit.databases["d"]))[2] == int(server["port"])


async def test_a_pool_from_an_empty_table_uses_the_environment(
    server: dict[str, str], clean_env: pytest.MonkeyPatch
) -> None:
    for var, key in (("PGHOST", "host"), ("PGPORT", "port"), ("PGUSER", "user")):
        clean_env.setenv(var, server[key])
    clean_env.setenv("PGDATABASE", server["dbname"])
    config = ConnectorConfig.from_toml_string(
        '[databases.d]\n[pools.p]\ndatabase = "d"\nsize = 1\n'
    )
    async with pool.open_pool("p", config.pools["p"], config.databases["d"]):
        assert (await pool.query("p", "SELECT current_database()")).scalar() == server["dbname"]


def write_service_file(path: Path, name: str, **settings: str) -> Path:
    lines = [f"[{name}]", *(f"{k}={v}" for k, v in settings.items())]
    path.write_text("# services for the tests\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


async def test_a_service_means_what_libpq_says(
    server: dict[str, str], tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    services = write_service_file(
        tmp_path / "pg_service.conf",
        "otpy_test",
        host=server["host"],
        port=server["port"],
        user=server["user"],
        dbname=server["dbname"],
        connect_timeout="4",
    )
    clean_env.setenv("PGSERVICEFILE", str(services))
    # The service file wins over the environment (libpq's precedence), which
    # psycopg's own attempt logic gets wrong for host and port (psycopg#698).
    clean_env.setenv("PGHOST", "otpy-no-such-host.invalid")
    clean_env.setenv("PGPORT", str(closed_port()))
    expected = (server["dbname"], server["user"], int(server["port"]))
    from_dsn = DatabaseConfig.from_dsn("d", "service=otpy_test")
    assert from_dsn.service == "otpy_test"
    assert "connect_timeout" not in from_dsn.connect_kwargs()  # the service's 4 s stands
    assert (await where(from_dsn))[:3] == expected
    from_table = ConnectorConfig.from_mapping({"databases": {"d": {"service": "otpy_test"}}})
    assert (await where(from_table.databases["d"]))[:3] == expected
    clean_env.setenv("PGSERVICE", "otpy_test")
    from_env = ConnectorConfig.from_mapping({"databases": {"d": {}}})
    assert (await where(from_env.databases["d"]))[:3] == expected
    assert from_env.databases["d"].describe().endswith(f":{server['port']}/{server['dbname']}")


def test_an_unknown_service_or_a_missing_service_file_fails_at_load(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    services = write_service_file(tmp_path / "pg_service.conf", "known", host="h")
    clean_env.setenv("PGSERVICEFILE", str(services))
    with pytest.raises(ConfigError, match=r"databases\.d\.service: .*\"unknown\" not found"):
        ConnectorConfig.from_mapping({"databases": {"d": {"service": "unknown"}}})
    with pytest.raises(ConfigError, match=r"databases\.d\.service: .*not found"):
        DatabaseConfig.from_dsn("d", "service=unknown")
    clean_env.setenv("PGSERVICEFILE", str(tmp_path / "missing.conf"))
    with pytest.raises(ConfigError, match=r"databases\.d\.service: .*missing\.conf"):
        DatabaseConfig.from_dsn("d", "service=known")
    clean_env.setenv("PGSERVICE", "known")
    with pytest.raises(ConfigError, match=r"databases\.d: .*PGSERVICE"):
        ConnectorConfig.from_mapping({"databases": {"d": {"host": "h"}}})


async def test_multi_host_with_a_port_per_host(server: dict[str, str]) -> None:
    closed = closed_port()
    host, port, user, dbname = server["host"], server["port"], server["user"], server["dbname"]
    forms = [
        DatabaseConfig.from_dsn(
            "d", f"host={host},{host} port={closed},{port} user={user} dbname={dbname}"
        ),
        DatabaseConfig.from_dsn("d", f"postgresql://{user}@{host}:{closed},{host}:{port}/{dbname}"),
        ConnectorConfig.from_mapping(
            {
                "databases": {
                    "d": {
                        "host": [host, host],
                        "port": [closed, int(port)],
                        "username": user,
                        "database": dbname,
                    }
                }
            }
        ).databases["d"],
    ]
    for db in forms:
        assert db.port == (closed, int(port))
        assert (await where(db))[2] == int(port)  # the first host refused, the second served


def test_ports_must_match_the_hosts() -> None:
    with pytest.raises(ConfigError, match=r"databases\.d\.port: 3 ports for 2 host"):
        DatabaseConfig.from_dsn("d", "host=a,b port=1,2,3")
    with pytest.raises(ConfigError, match=r"databases\.d\.port\[1\]: must be between 1 and"):
        ConnectorConfig.from_mapping({"databases": {"d": {"host": ["a", "b"], "port": [1, 0]}}})


@pytest.mark.parametrize("key", ["sslrootcert", "sslcert", "sslkey", "passfile"])
def test_a_missing_file_is_reported_at_load(key: str, tmp_path: Path) -> None:
    missing = str(tmp_path / f"no-{key}")
    with pytest.raises(
        ConfigError, match=rf"databases\.d\.{key}: file '.*no-{key}' does not exist"
    ):
        ConnectorConfig.from_mapping({"databases": {"d": {"host": "h", key: missing}}})
    with pytest.raises(ConfigError, match=rf"databases\.d\.{key}: file"):
        DatabaseConfig.from_dsn("d", f"host=h {key}={missing}")
    with pytest.raises(ConfigError, match=r"databases\.d\.params\.sslcrl: file"):
        ConnectorConfig.from_mapping({"databases": {"d": {"params": {"sslcrl": missing}}}})
    # sslrootcert=system is libpq's "the system's CA store", not a file.
    ConnectorConfig.from_mapping({"databases": {"d": {"sslrootcert": "system"}}})


async def test_open_pool_reports_a_missing_file_instead_of_retrying(
    server: dict[str, str], tmp_path: Path
) -> None:
    db = DatabaseConfig(
        name="db",
        host=server["host"],
        port=int(server["port"]),
        sslrootcert=str(tmp_path / "root.crt"),
    )
    config = PoolConfig(name="p", database="db", min_size=1, max_size=1)
    with pytest.raises(ConfigError, match=r"databases\.db\.sslrootcert: file .* does not exist"):
        async with pool.open_pool("p", config, db):
            pass  # pragma: no cover
    with pytest.raises(ConfigError, match=r"sslrootcert"):
        pool.pool_spec("p", config, db)


async def test_a_password_file_named_by_the_config_is_used(
    server: dict[str, str], tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:*:{server['user']}:from-the-passfile\n", encoding="utf-8")
    passfile.chmod(0o600)
    db = ConnectorConfig.from_mapping(
        {
            "databases": {
                "d": {
                    "host": server["host"],
                    "port": int(server["port"]),
                    "username": server["user"],
                    "database": server["dbname"],
                    "passfile": str(passfile),
                }
            }
        }
    ).databases["d"]
    assert (await where(db))[3] == "from-the-passfile"
    # The same file named by $PGPASSFILE, for a configuration that names none.
    clean_env.setenv("PGPASSFILE", str(passfile))
    without = attrs.evolve(db, passfile=None)
    assert (await where(without))[3] == "from-the-passfile"


async def test_connect_timeout_comes_from_the_environment_when_absent(
    clean_env: pytest.MonkeyPatch,
) -> None:
    db = DatabaseConfig.from_dsn("d", "host=h")
    assert db.connect_timeout is None and db.connect_kwargs()["connect_timeout"] == 10
    clean_env.setenv("PGCONNECT_TIMEOUT", "7")
    assert "connect_timeout" not in db.connect_kwargs()  # libpq reads the environment
    assert (
        DatabaseConfig.from_dsn("d", "host=h connect_timeout=3").connect_kwargs()["connect_timeout"]
        == 3
    )


async def test_sslmode_from_the_environment_reaches_libpq(
    server: dict[str, str], clean_env: pytest.MonkeyPatch
) -> None:
    db = DatabaseConfig(
        name="d",
        host=server["host"],
        port=int(server["port"]),
        username=server["user"],
        database=server["dbname"],
    )
    clean_env.setenv("PGSSLMODE", "require")
    try:
        async with await TrioConnection.connect(**db.connect_kwargs()) as conn:
            assert conn.pgconn.ssl_in_use  # a server with SSL: required and used
    except psycopg.OperationalError as exc:
        assert "SSL" in str(exc)  # a server without SSL: refused, as required
    clean_env.setenv("PGSSLMODE", "disable")
    async with await TrioConnection.connect(**db.connect_kwargs()) as conn:
        assert not conn.pgconn.ssl_in_use
