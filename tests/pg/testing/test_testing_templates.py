"""Template databases: the cheap clean database per test behind ``otpy_dsn``."""

from __future__ import annotations

import psycopg
import pytest

from otpy.pg.testing import (
    PostgresServer,
    copy_strategy,
    create_database,
    create_template,
    drop_database,
    unique_name,
)


def test_a_throw_away_server_copies_templates_file_by_file(own_server: PostgresServer) -> None:
    # fsync is off there, so FILE_COPY's checkpoints are cheap, and it keeps
    # the copy out of the WAL that every WAL reader of the server must read past.
    with psycopg.connect(own_server.dsn) as conn:
        newer = conn.info.server_version >= 150000
    assert copy_strategy(own_server.dsn) == ("FILE_COPY" if newer else None)


def test_a_copy_has_the_template_s_schema_and_the_template_refuses_connections(
    pg_dsn: str,
) -> None:
    template = create_template(pg_dsn, unique_name("tpl"), ["CREATE TABLE kept (x int)"])
    copy = unique_name("copy")
    try:
        dsn = create_database(pg_dsn, copy, template=template, strategy=copy_strategy(pg_dsn))
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
        template_dsn = dsn.replace(copy, template)
        with pytest.raises(psycopg.OperationalError, match="not currently accepting"):
            psycopg.connect(template_dsn)
    finally:
        drop_database(pg_dsn, copy)
        drop_database(pg_dsn, template)


def test_an_unknown_copy_strategy_is_refused_before_anything_is_created(pg_dsn: str) -> None:
    with pytest.raises(ValueError, match="strategy must be"):
        create_database(pg_dsn, "never_made", strategy="FAST; DROP DATABASE postgres")


def test_unique_names_fit_postgres_identifiers() -> None:
    name = unique_name("t_" + "x" * 100 + "[param-é]")
    assert len(name) <= 63 and name.isascii() and name.startswith("t_xxx")
    assert unique_name("a") != unique_name("a")
