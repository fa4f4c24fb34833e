"""Publications otpy creates can carry row filters, column lists and parameters."""

from __future__ import annotations

from typing import Any

import pytest
from wr_helpers import Recorder, execute, query, unique

from otpy import Ref
from otpy.pg import wal_reader
from otpy.pg.replication.options import PublicationSpec, PublishedTable
from otpy.pg.wal_reader import InvalidOptions, ReaderOptions

#: A table name that only works quoted (a space and a double quote).
ODD = '"Odd ""t"""'


async def server_version(dsn: str) -> int:
    return int((await query(dsn, "SELECT current_setting('server_version_num')::int"))[0][0])


def test_the_mapping_form_is_validated_and_kept() -> None:
    opts = ReaderOptions(
        create_publication={
            "tables": {"t": {"columns": ["id", "a"], "where": "id > 10"}, "s.u": None},
            "publish_via_partition_root": True,
            "publish_generated_columns": True,
        }
    )
    assert opts.create_publication == PublicationSpec(
        (PublishedTable("t", ("id", "a"), "id > 10"), PublishedTable("s.u")), True, "stored"
    )
    assert ReaderOptions(create_publication={"tables": ["a", "b"]}).create_publication == (
        PublicationSpec((PublishedTable("a"), PublishedTable("b")))
    )
    assert ReaderOptions(create_publication={}).create_publication == PublicationSpec()


@pytest.mark.parametrize(
    "bad",
    [
        {"table": ["t"]},
        {"tables": []},
        {"tables": "t"},
        {"tables": {"t": {"colums": ["a"]}}},
        {"tables": {"t": {"columns": "a"}}},
        {"tables": {"t": {"columns": []}}},
        {"tables": {"t": {"where": ""}}},
        {"tables": {"": None}},
        {"publish_via_partition_root": "yes"},
        {"publish_generated_columns": "virtual"},
    ],
)
def test_a_bad_publication_mapping_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidOptions, match="create_publication"):
        ReaderOptions(create_publication=bad)


async def test_a_created_publication_has_the_row_filter_and_column_list(
    module_dsn: str, readers: Ref
) -> None:
    await execute(module_dsn, f"CREATE TABLE {ODD} (id int PRIMARY KEY, a text, b text)")
    pub = unique("filtered")
    rec = Recorder()
    spec = {"tables": {'Odd "t"': {"columns": ["id", "a"], "where": "id > 10"}}}
    ref = await wal_reader.subscribe(
        rec, module_dsn, unique("pubp"), [pub], {"create_publication": spec}
    )
    try:
        await execute(
            module_dsn,
            f"INSERT INTO {ODD} VALUES (1, 'no', 'x'), (11, 'yes', 'x')",
            f"INSERT INTO {ODD} VALUES (12, 'yes too', 'x')",
        )
        changes = await rec.wait_changes(2)
        assert [c.data for c in changes] == [{"id": 11, "a": "yes"}, {"id": 12, "a": "yes too"}]
    finally:
        await wal_reader.unsubscribe(ref)


async def test_publish_via_partition_root_names_the_root(module_dsn: str, readers: Ref) -> None:
    await execute(
        module_dsn,
        "CREATE TABLE measures (id int, at date) PARTITION BY RANGE (at)",
        "CREATE TABLE measures_2026 PARTITION OF measures "
        "FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
    )
    for via_root, table in ((True, "measures"), (False, "measures_2026")):
        rec = Recorder()
        spec = {"tables": ["measures"], "publish_via_partition_root": via_root}
        ref = await wal_reader.subscribe(
            rec, module_dsn, unique("part"), [unique("parts")], {"create_publication": spec}
        )
        try:
            await execute(module_dsn, "INSERT INTO measures VALUES (1, '2026-06-01')")
            assert [c.table for c in await rec.wait_changes(1)] == [table]
        finally:
            await wal_reader.unsubscribe(ref)
            await execute(module_dsn, "TRUNCATE measures")


async def test_publish_generated_columns_sends_stored_generated_columns(
    module_dsn: str, readers: Ref
) -> None:
    spec = {"tables": ["gen"], "publish_generated_columns": "stored"}
    if await server_version(module_dsn) < 180000:
        with pytest.raises(InvalidOptions, match="publish_generated_columns needs PostgreSQL 18"):
            await wal_reader.subscribe(
                Recorder(),
                module_dsn,
                unique("gen"),
                [unique("genp")],
                {"create_publication": spec},
            )
        return
    await execute(
        module_dsn,
        "CREATE TABLE gen (id int PRIMARY KEY, twice int GENERATED ALWAYS AS (id * 2) STORED)",
    )
    rec = Recorder()
    ref = await wal_reader.subscribe(
        rec, module_dsn, unique("gen"), [unique("genp")], {"create_publication": spec}
    )
    try:
        await execute(module_dsn, "INSERT INTO gen (id) VALUES (21)")
        assert (await rec.wait_changes(1))[0].data == {"id": 21, "twice": 42}
    finally:
        await wal_reader.unsubscribe(ref)
