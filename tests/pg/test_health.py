"""The Prometheus endpoint, /healthz and /readyz, and the [metrics] configuration table."""

from __future__ import annotations

import psycopg
import pytest
import trio
from obs_helpers import http_get, wait_until
from pool_helpers import pool_config
from prometheus_client.parser import text_string_to_metric_families
from wr_helpers import Recorder, create_publication, execute, unique

from otpy import Ref
from otpy.pg import pool, wal_reader
from otpy.pg.config import ConnectorConfig, DatabaseConfig, MetricsConfig
from otpy.pg.errors import ConfigError
from otpy.pg.health import serve_metrics


@pytest.fixture(scope="module")
def pub(module_dsn: str) -> str:
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE things (id int PRIMARY KEY)")
    create_publication(module_dsn, "things_pub", ["things"])
    return "things_pub"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_the_prometheus_output_parses_and_covers_readers_and_pools(
    module_dsn: str, db: DatabaseConfig, pub: str, readers: Ref
) -> None:
    rec = Recorder()
    slot = unique("prom")
    async with (
        pool.open_pool("metrics_pool", pool_config(2), db) as p,
        trio.open_nursery() as nursery,
    ):
        sub = await wal_reader.subscribe(rec, module_dsn, slot, [pub])
        try:
            port = await nursery.start(serve_metrics, "127.0.0.1", 0)
            await p.query("SELECT 1")
            await execute(module_dsn, "INSERT INTO things VALUES (1)")
            await rec.wait_changes(1)
            await wait_until(lambda: sub.metrics().transactions == 1)

            status, headers, body = await http_get(port, "/metrics")
            assert status == 200
            assert headers["content-type"].startswith("text/plain")
            families = {f.name: f for f in text_string_to_metric_families(body)}
            assert families["otpy_reader_lag_bytes"].type == "gauge"
            assert families["otpy_reader_transactions"].type == "counter"
            assert families["otpy_reader_handler_duration_seconds"].type == "histogram"
            assert families["otpy_pool_checkout_wait_seconds"].type == "histogram"
            assert families["otpy_pool_connection_hold_seconds"].type == "histogram"
            samples = _samples(body)
            one_slot = (("slot", slot),)
            assert samples["otpy_reader_transactions_total", one_slot] == 1
            assert samples["otpy_reader_changes_total", one_slot] == 1
            assert samples["otpy_reader_state", (("slot", slot), ("state", "streaming"))] == 1
            assert samples["otpy_reader_healthy", one_slot] == 1
            assert samples["otpy_reader_handler_duration_seconds_count", one_slot] == 1
            assert samples["otpy_reader_lag_seconds", one_slot] == 0
            the_pool = (("pool", "metrics_pool"),)
            assert samples["otpy_pool_size", the_pool] == 2
            assert samples["otpy_pool_checkouts_total", the_pool] >= 1
            assert samples["otpy_pool_checkout_wait_seconds_count", the_pool] >= 1
            assert samples["otpy_pool_connection_hold_seconds_count", the_pool] >= 1
            assert (
                samples["otpy_pool_connections_closed_total", (*the_pool, ("reason", "lost"))] == 0
            )

            assert await http_get(port, "/healthz") == (200, _headers(3), "ok\n")
            status, _, text = await http_get(port, "/readyz")
            assert (status, text) == (200, "ready\n")
            status, _, _ = await http_get(port, "/nothing")
            assert status == 404
        finally:
            await wal_reader.unsubscribe(sub)
        nursery.cancel_scope.cancel()


def _headers(length: int) -> dict[str, str]:
    return {
        "content-type": "text/plain; charset=utf-8",
        "content-length": str(length),
        "connection": "close",
    }


async def test_readyz_names_a_pool_that_cannot_connect(db: DatabaseConfig) -> None:
    nowhere = DatabaseConfig(
        name="nowhere", database="x", host="127.0.0.1", port=1, connect_timeout=1.0
    )
    async with (
        pool.open_pool("down_pool", pool_config(1), nowhere, wait=False) as p,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(serve_metrics, "127.0.0.1", 0)
        with trio.fail_after(10):
            await p.wait_for(lambda s: s.down)
        status, _, text = await http_get(port, "/readyz")
        assert status == 503
        assert "pool 'down_pool' is down" in text
        nursery.cancel_scope.cancel()


def test_the_metrics_table_is_read_from_the_connector_config() -> None:
    config = ConnectorConfig.from_toml_string("[metrics]\nport = 9300\n")
    assert config.metrics == MetricsConfig(port=9300, host="127.0.0.1")
    assert ConnectorConfig.from_mapping({}).metrics is None
    with pytest.raises(ConfigError, match=r"metrics\.prot.*did you mean 'port'"):
        ConnectorConfig.from_mapping({"metrics": {"prot": 1}})
    with pytest.raises(ConfigError, match=r"metrics\.port"):
        ConnectorConfig.from_mapping({"metrics": {"port": 70000}})


async def test_supervisor_restarts_are_exported_per_supervisor() -> None:
    from otpy import ChildSpec, Supervisor, TaskServer
    from otpy import start as start_actor
    from otpy.pg.metrics import exposition, snapshot

    crashes = 0
    running = trio.Event()

    async def flaky() -> None:
        nonlocal crashes
        if crashes < 2:
            crashes += 1
            raise ValueError("not yet")
        running.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        spec = ChildSpec(id="flaky", start=lambda: TaskServer(flaky))
        await start_actor(nursery, Supervisor([spec], intensity=5, period=5), name="obs_sup")
        with trio.fail_after(5):
            await running.wait()
        assert ("'obs_sup'", 2) in snapshot().supervisor_restarts
        samples = _samples(exposition().decode())
        assert samples["otpy_supervisor_restarts_total", (("supervisor", "'obs_sup'"),)] == 2
        nursery.cancel_scope.cancel()


async def test_the_connector_serves_the_endpoint_its_metrics_table_names() -> None:
    import logging

    from otpy import start as start_actor
    from otpy.pg.app import connector_supervisor

    ports: list[int] = []
    listening = trio.Event()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "event", None) == "metrics_listening":
                ports.append(record.port)  # type: ignore[attr-defined]
                listening.set()

    catch = Catch()
    logger = logging.getLogger("otpy.pg.health")
    logger.addHandler(catch)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        config = ConnectorConfig.from_mapping({"metrics": {"port": 0}})
        async with trio.open_nursery() as nursery:
            await start_actor(nursery, connector_supervisor(config))
            with trio.fail_after(5):
                await listening.wait()
            status, _, text = await http_get(ports[0], "/readyz")
            assert (status, text) == (200, "ready\n")
            status, _, body = await http_get(ports[0], "/metrics")
            assert status == 200
            assert "otpy_supervisor_restarts_total" in body
            nursery.cancel_scope.cancel()
    finally:
        logger.removeHandler(catch)
        logger.setLevel(old_level)
