"""otpy.pg.config: loading, validation messages, secrets, and connecting with the result."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from otpy.pg.config import Backoff, ConnectorConfig, DatabaseConfig, PoolConfig, Secret
from otpy.pg.connection import TrioConnection
from otpy.pg.errors import ConfigError

SECRET = "hunter2-very-secret"
# Files named by a configuration must exist when it is loaded.
ROOT_CERT = str(Path(__file__).with_name("files") / "root.crt")

EPG_LIKE = {
    "databases": {
        "main_db": {
            "host": "127.0.0.1",
            "port": 5432,
            "database": "myapp_production",
            "username": "postgres",
            "password": SECRET,
        },
        "read_db": {
            "host": "replica.example.com",
            "database": "myapp_production",
            "username": "readonly_user",
            "password_env": "READ_DB_PASSWORD",
            "sslmode": "verify-full",
            "sslrootcert": ROOT_CERT,
            "params": {"target_session_attrs": "read-only", "keepalives_idle": 30},
        },
    },
    "pools": {
        "main_pool": {"database": "main_db", "size": [20, 50]},
        "readonly_pool": {"database": "read_db", "size": 10, "checkout_timeout": 1.5},
    },
}


def _load(data: dict[str, Any], **env: str) -> ConnectorConfig:
    return ConnectorConfig.from_mapping(data, environ={"READ_DB_PASSWORD": "ro-pass", **env})


def _with(path: str, value: Any) -> dict[str, Any]:
    """A deep copy of EPG_LIKE with ``path`` (dotted) set to ``value`` (or removed: ...)."""
    import copy

    data = copy.deepcopy(EPG_LIKE)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


def test_loads_the_epg_connector_example() -> None:
    config = _load(EPG_LIKE)
    main = config.databases["main_db"]
    assert main == DatabaseConfig(
        name="main_db",
        host="127.0.0.1",
        port=5432,
        database="myapp_production",
        username="postgres",
        password=Secret(SECRET),
    )
    read = config.databases["read_db"]
    # No port given: libpq's (PGPORT, the service file, 5432), not one filled in by otpy.
    assert read.port is None and read.sslmode == "verify-full"
    assert read.password == Secret("ro-pass") and read.password_env == "READ_DB_PASSWORD"
    assert read.params == {"target_session_attrs": "read-only", "keepalives_idle": "30"}
    main_pool = config.pools["main_pool"]
    assert (main_pool.min_size, main_pool.max_size, main_pool.size) == (20, 50, (20, 50))
    ro_pool = config.pools["readonly_pool"]
    assert ro_pool.size == 10 and ro_pool.checkout_timeout == 1.5
    assert config.database_of("readonly_pool") is read


def test_pool_defaults_are_sensible() -> None:
    pool = _load(EPG_LIKE).pools["main_pool"]
    assert pool == PoolConfig(name="main_pool", database="main_db", min_size=20, max_size=50)
    assert pool.checkout_timeout == 5.0  # epg_connector's 5000 ms
    assert pool.max_waiting > 0 and pool.reconnect == Backoff(jitter=0.1)
    assert pool.max_lifetime and pool.max_idle and pool.health_check_interval


def test_pool_options_and_disabling() -> None:
    data = _with(
        "pools.main_pool",
        {
            "database": "main_db",
            "size": [0, 4],
            "max_waiting": 0,
            "max_lifetime": False,
            "max_idle": 30,
            "health_check_interval": False,
            "reconnect": {"initial": 0.5, "maximum": 10, "multiplier": 3, "jitter": 0},
        },
    )
    pool = _load(data).pools["main_pool"]
    assert (pool.min_size, pool.max_size, pool.max_waiting) == (0, 4, 0)
    assert pool.max_lifetime is None and pool.health_check_interval is None
    assert pool.max_idle == 30.0
    assert pool.reconnect == Backoff(initial=0.5, maximum=10.0, multiplier=3.0, jitter=0.0)
    assert [pool.reconnect.delay(n) for n in range(1, 5)] == [0.5, 1.5, 4.5, 10.0]


class _Extreme(random.Random):
    """A random source that always picks one end of a uniform range."""

    def __init__(self, high: bool) -> None:
        super().__init__()
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def test_backoff_jitter_stays_in_bounds() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0, multiplier=2.0, jitter=0.25)
    assert backoff.delay(1, _Extreme(high=False)) == 0.75
    assert backoff.delay(1, _Extreme(high=True)) == pytest.approx(1.25)
    assert backoff.delay(11, _Extreme(high=True)) == 8.0  # jitter never exceeds the maximum


def test_loads_toml_with_password_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "connector.toml"
    path.write_text(
        """
[databases.main_db]
host = ["db1.example.com", "db2.example.com"]
port = 6432
database = "app"
username = "app"
password_env = "MAIN_DB_PASSWORD"
connect_timeout = 3

[pools.main_pool]
database = "main_db"
size = [2, 8]

[pools.main_pool.reconnect]
maximum = 5
""",
        encoding="utf-8",
    )
    config = ConnectorConfig.from_toml(path, environ={"MAIN_DB_PASSWORD": SECRET})
    db = config.databases["main_db"]
    assert db.host == "db1.example.com,db2.example.com" and db.port == 6432
    assert db.password is not None and db.password.reveal() == SECRET
    assert config.pools["main_pool"].reconnect.maximum == 5.0
    kwargs = db.connect_kwargs(autocommit=True)
    assert kwargs == {
        "host": "db1.example.com,db2.example.com",
        "port": 6432,
        "dbname": "app",
        "user": "app",
        "password": SECRET,
        "connect_timeout": 3,
        "autocommit": True,
    }


def test_password_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    config = _load(EPG_LIKE)
    db = config.databases["main_db"]
    for text in (repr(config), str(config), repr(db), str(db), repr(db.password), db.describe()):
        assert SECRET not in text
    assert "********" in repr(db)
    with caplog.at_level(logging.INFO):
        logging.getLogger("otpy.test").info("config: %s %r", config, db)
    assert SECRET not in caplog.text and "********" in caplog.text


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "pools.main_pool.database",
            "maindb",
            "pools.main_pool.database: unknown database 'maindb' (did you mean 'main_db'?)",
        ),
        ("pools.main_pool.sise", 3, "pools.main_pool.sise: unknown key (did you mean 'size'?)"),
        ("databases.main_db.hots", "x", "databases.main_db.hots: unknown key (did you mean 'host'"),
        (
            "databases.main_db.port",
            "5432",
            "databases.main_db.port: expected an integer, got '5432'",
        ),
        ("databases.main_db.port", 70000, "databases.main_db.port: must be between 1 and 65535"),
        ("databases.main_db.database", 42, "databases.main_db.database: expected a non-empty"),
        ("databases.main_db.username", "", "databases.main_db.username: expected a non-empty"),
        ("databases.read_db.sslmode", "verify_full", "(did you mean 'verify-full'?)"),
        (
            "databases.read_db.params",
            {"target_session_atrs": "any"},
            "databases.read_db.params.target_session_atrs: not a libpq parameter (did you mean "
            "'target_session_attrs'?)",
        ),
        (
            "databases.read_db.params",
            {"user": "x"},
            "databases.read_db.params.user: set this with username instead",
        ),
        ("pools.main_pool.size", [50, 20], "pools.main_pool.size: min must not exceed max"),
        ("pools.main_pool.size", 0, "pools.main_pool.size: must be >= 1, got 0"),
        ("pools.main_pool.size", [1, 2, 3], "pools.main_pool.size: expected an integer or [min"),
        ("pools.main_pool.size", ..., "pools.main_pool.size: is required"),
        (
            "pools.main_pool.checkout_timeout",
            -1,
            "pools.main_pool.checkout_timeout: must be a non-negative number of seconds, got -1",
        ),
        ("pools.main_pool.max_lifetime", "1h", "pools.main_pool.max_lifetime: expected a number"),
        ("pools.main_pool.reconnect", {"jitter": 2}, "pools.main_pool.reconnect.jitter: expected"),
        ("pools.main_pool.max_waiting", True, "pools.main_pool.max_waiting: expected an integer"),
        ("pools.main_pool", "main_db", "pools.main_pool: expected a table/mapping, got str"),
        ("databses", {}, "databses: unknown key (did you mean 'databases'?)"),
    ],
)
def test_bad_config_names_the_key_and_value(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(_with(path, value))
    assert message in str(info.value)
    assert info.value.path.startswith(path.split(".")[0])
    assert SECRET not in str(info.value)


def test_password_errors_never_echo_it() -> None:
    with pytest.raises(ConfigError, match="give either password or password_env") as info:
        _load(_with("databases.main_db.password_env", "X"), X="y")
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match="expected a string, got int") as info2:
        _load(_with("databases.main_db.password", 123456))
    assert "123456" not in str(info2.value)
    with pytest.raises(
        ConfigError,
        match=r"databases\.read_db\.password_env: environment variable "
        r"'READ_DB_PASSWORD' is not set",
    ):
        ConnectorConfig.from_mapping(EPG_LIKE, environ={})


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not valid TOML"):
        ConnectorConfig.from_toml_string("[databases\n")
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        ConnectorConfig.from_toml(tmp_path / "missing.toml")


async def test_connect_with_a_loaded_config(pg_dsn: str) -> None:
    params = conninfo_to_dict(pg_dsn)
    config = ConnectorConfig.from_mapping(
        {
            "databases": {
                "test_db": {
                    "host": params["host"],
                    "port": int(params["port"]),  # type: ignore[arg-type]
                    "database": params["dbname"],
                    "username": params["user"],
                    "password_env": "TEST_DB_PASSWORD",
                    "application_name": "otpy-config-test",
                    "params": {"options": "-c statement_timeout=12345"},
                }
            },
            "pools": {"p": {"database": "test_db", "size": 1}},
        },
        environ={"TEST_DB_PASSWORD": SECRET},  # trust auth: accepted and ignored
    )
    kwargs = config.database_of("p").connect_kwargs(autocommit=True)
    async with await TrioConnection.connect(**kwargs) as conn:
        cur = await conn.execute(
            "SELECT current_setting('application_name'), current_setting('statement_timeout')"
        )
        assert await cur.fetchone() == ("otpy-config-test", "12345ms")
        assert conn.info.password == SECRET
    with pytest.warns(DeprecationWarning, match=r"DatabaseConfig\.connect\(\) moved") as w:
        conn = await config.database_of("p").connect(autocommit=True)
    assert w[0].filename == __file__
    async with conn:
        assert conn.info.password == SECRET


def test_secret_libpq_params_are_redacted() -> None:
    data = _with("databases.main_db.params", {"sslpassword": "key-passphrase", "keepalives": 1})
    db = _load(data).databases["main_db"]
    assert "key-passphrase" not in repr(db) and "'keepalives': '1'" in repr(db)
    assert db.connect_kwargs()["sslpassword"] == "key-passphrase"


def test_database_from_dsn_keeps_every_setting() -> None:
    db = DatabaseConfig.from_dsn(
        "main_db",
        "host=db1,db2 port=5433 dbname=shop user=app password=s3cret sslmode=require "
        "application_name=svc target_session_attrs=read-write keepalives_idle=30",
    )
    assert (db.host, db.port, db.database, db.username) == ("db1,db2", 5433, "shop", "app")
    assert db.password is not None and db.password.reveal() == "s3cret"
    assert db.sslmode == "require" and db.application_name == "svc"
    assert db.params == {"target_session_attrs": "read-write", "keepalives_idle": "30"}
    assert "s3cret" not in repr(db)
    kwargs = db.connect_kwargs()
    assert kwargs["dbname"] == "shop" and kwargs["target_session_attrs"] == "read-write"


def test_database_from_url_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGDATABASE", raising=False)
    db = DatabaseConfig.from_dsn("d", "postgresql://app@localhost:6000/inventory")
    assert (db.host, db.port, db.database, db.username) == ("localhost", 6000, "inventory", "app")
    only_user = DatabaseConfig.from_dsn("d", "user=app")
    # libpq's default, the user name, applied by libpq (otpy fills nothing in).
    assert only_user.database is None and only_user.describe().endswith("/app")


def test_bad_dsn_never_echoes_it() -> None:
    with pytest.raises(ConfigError, match=r"databases\.d: not a valid libpq") as info:
        DatabaseConfig.from_dsn("d", "host=x password=hunter2 = =")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match=r"databases\.d\.sslmode"):
        DatabaseConfig.from_dsn("d", "host=x sslmode=sometimes")


def test_database_entries_may_be_dsn_strings() -> None:
    config = ConnectorConfig.from_toml_string(
        """
        [databases]
        main_db = "postgresql://app@db.internal/shop"

        [pools.main_pool]
        database = "main_db"
        size = 3
        """
    )
    assert config.database_of("main_pool").host == "db.internal"
    assert config.database_of("main_pool").database == "shop"
