"""``otpy tail`` and ``otpy slots`` against the real server."""

from __future__ import annotations

import io
import json

import psycopg
import pytest
import trio

from otpy.cli import EXIT_CONFIG, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNAVAILABLE, main
from otpy.cli.slots import SlotCommandError, run_slots
from otpy.cli.tail import tail
from otpy.pg.replication.lsn import LSN


@pytest.fixture(scope="module")
def tail_dsn(module_dsn: str) -> str:
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text, price numeric)")
        conn.execute("ALTER TABLE items REPLICA IDENTITY FULL")
        conn.execute("CREATE PUBLICATION items_pub FOR TABLE items")
    return module_dsn


async def _run_tail(dsn: str, statements: list[str], **kwargs: object) -> str:
    out = io.StringIO()
    ready = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: tail(dsn, ["items_pub"], out=out, ready=ready, **kwargs)  # type: ignore[arg-type]
        )
        with trio.fail_after(15):
            await ready.wait()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)
    return out.getvalue()


async def test_tail_json_lines(tail_dsn: str) -> None:
    text = await _run_tail(
        tail_dsn,
        [
            "INSERT INTO items VALUES (1, 'apple', 1.50)",
            "UPDATE items SET price = 2 WHERE id = 1",
            "DELETE FROM items WHERE id = 1",
        ],
        as_json=True,
        limit=3,
    )
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(c["table"], c["op"]) for c in lines] == [
        ("items", "insert"),
        ("items", "update"),
        ("items", "delete"),
    ]
    assert lines[0]["data"] == {"id": 1, "name": "apple", "price": "1.50"}
    assert lines[1]["old"] == {"id": 1, "name": "apple", "price": "1.50"}
    assert lines[1]["data"]["price"] == "2"
    assert lines[0]["schema"] == "public" and "/" in lines[0]["lsn"]


async def test_tail_json_shows_user_types_and_lsns_as_postgresql_does(tail_dsn: str) -> None:
    # An enum as its label (psycopg's members number their values), a composite as
    # an object of its fields, a pg_lsn as X/Y text.
    with psycopg.connect(tail_dsn, autocommit=True) as conn:
        conn.execute("CREATE TYPE tail_mood AS ENUM ('sad', 'happy')")
        conn.execute("CREATE TYPE tail_pair AS (n int, s text)")
        conn.execute(
            "CREATE TABLE odd (id int PRIMARY KEY, m tail_mood, p tail_pair, l pg_lsn, "
            "tags tail_mood[])"
        )
        conn.execute("ALTER PUBLICATION items_pub ADD TABLE odd")
    text = await _run_tail(
        tail_dsn,
        [
            "INSERT INTO odd VALUES (1, 'happy', ROW(1, 'x'), '16/B374D848', "
            "ARRAY['sad', 'happy']::tail_mood[])"
        ],
        as_json=True,
        limit=1,
    )
    (line,) = [json.loads(line) for line in text.splitlines()]
    assert line["data"] == {
        "id": 1,
        "m": "happy",
        "p": {"n": 1, "s": "x"},
        "l": "16/B374D848",
        "tags": ["sad", "happy"],
    }


async def test_tail_pretty_lines(tail_dsn: str) -> None:
    text = await _run_tail(tail_dsn, ["INSERT INTO items VALUES (2, 'pear', NULL)"], limit=1)
    (line,) = text.splitlines()
    assert "insert" in line and "public.items" in line and "name='pear' price=None" in line


def test_tail_missing_publication(tail_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["tail", "--dsn", tail_dsn, "--publication", "no_such_pub", "--limit", "1"])
    assert code == EXIT_NOT_FOUND
    assert "no_such_pub" in capsys.readouterr().err


def test_tail_bad_slot_name(tail_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["tail", "--dsn", tail_dsn, "--publication", "items_pub", "--slot", "Bad-Name;"]
    assert main(args) == EXIT_CONFIG
    assert "Bad-Name;" in capsys.readouterr().err


@pytest.fixture
def slot(tail_dsn: str) -> str:
    with psycopg.connect(tail_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('cli_slot', 'pgoutput')")
    yield "cli_slot"
    with psycopg.connect(tail_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = 'cli_slot'"
        )


def _slot_names(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots")]


def test_slots_lists_retained_wal_and_lag(
    tail_dsn: str, slot: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(tail_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items SELECT g, 'x', g FROM generate_series(100, 2000) g")
    assert main(["slots", "--dsn", tail_dsn]) == EXIT_OK
    out = capsys.readouterr().out
    header, rule, *rows = out.splitlines()
    assert set(rule) == {"-", " "}
    assert header.split()[:4] == ["slot", "plugin", "database", "kind"]
    (row,) = [r for r in rows if r.startswith(slot)]
    assert "pgoutput" in row and "persistent" in row and "inactive" in row

    assert main(["slots", "--dsn", tail_dsn, "--json"]) == EXIT_OK
    (info,) = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if json.loads(line)["name"] == slot
    ]
    # The slot holds back the WAL of the insert above: retained and lag are real byte counts.
    assert info["retained_bytes"] > 0 and info["lag_bytes"] > 0
    assert info["active"] is False and info["plugin"] == "pgoutput"
    assert "/" in info["confirmed_flush"] and "/" in info["restart_lsn"]  # LSNs as X/Y text


async def test_slots_drop_asks_first(tail_dsn: str, slot: str) -> None:
    out = io.StringIO()
    with pytest.raises(SlotCommandError, match="not dropped"):
        await run_slots(
            tail_dsn, drop=slot, yes=False, as_json=False, out=out, confirm=lambda _: "n"
        )
    assert slot in _slot_names(tail_dsn)
    questions: list[str] = []

    def say_yes(question: str) -> str:
        questions.append(question)
        return "y"

    await run_slots(tail_dsn, drop=slot, yes=False, as_json=False, out=out, confirm=say_yes)
    assert slot not in _slot_names(tail_dsn)
    assert "cli_slot" in questions[0] and "dropped slot 'cli_slot'" in out.getvalue()


def test_slots_drop_unknown_or_active(
    tail_dsn: str, slot: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["slots", "--dsn", tail_dsn, "--drop", "nope_slot", "--yes"]) == EXIT_NOT_FOUND
    assert "no replication slot named 'nope_slot'" in capsys.readouterr().err
    # A slot in use by a live session is refused, naming that session's pid.
    with psycopg.connect(tail_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_create_logical_replication_slot('cli_busy', 'pgoutput', true)")
        pid = holder.info.backend_pid
        assert main(["slots", "--dsn", tail_dsn, "--drop", "cli_busy", "--yes"]) == EXIT_UNAVAILABLE
        err = capsys.readouterr().err
        assert f"being read by backend pid {pid}" in err
        assert "cli_busy" in _slot_names(tail_dsn)


def test_slots_lag_counts_every_commit_even_before_the_wal_is_written(
    tail_dsn: str, slot: str, own_server: object, capsys: pytest.CaptureFixture[str]
) -> None:
    # Under synchronous_commit=off a commit is in the WAL buffers before it is
    # written; pg_current_wal_lsn() (the write position) then sits before it.
    # A slow WAL writer keeps it there for the length of this test.
    with psycopg.connect(tail_dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        conn.execute("SELECT pg_reload_conf()")
        try:
            conn.execute("SET synchronous_commit = off")
            # Another backend's flush (autovacuum, a checkpoint) may write our
            # commit out at once: commit again until it is caught unwritten.
            for key in range(5000, 5020):
                conn.execute("INSERT INTO items VALUES (%s, 'async', 1)", (key,))
                written, inserted = conn.execute(
                    "SELECT pg_current_wal_lsn()::text, pg_current_wal_insert_lsn()::text"
                ).fetchone()  # type: ignore[misc]
                if LSN.parse(written) < LSN.parse(inserted):  # the situation under test
                    break
            else:
                pytest.skip("every commit was written out at once: the situation never arose")
            assert main(["slots", "--dsn", tail_dsn, "--json"]) == EXIT_OK
        finally:
            conn.execute("ALTER SYSTEM RESET wal_writer_delay")
            conn.execute("SELECT pg_reload_conf()")
    (info,) = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if json.loads(line)["name"] == slot
    ]
    committed = LSN.parse(inserted) - LSN.parse(info["confirmed_flush"])
    assert info["lag_bytes"] >= committed > 0


def test_slots_show_the_columns_this_server_has(
    tail_dsn: str, slot: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(tail_dsn) as conn:
        version = conn.info.server_version
    new_columns = {"failover", "synced", "invalidation_reason"}
    assert main(["slots", "--dsn", tail_dsn, "--json"]) == EXIT_OK
    (info,) = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if json.loads(line)["name"] == slot
    ]
    assert info["wal_status"] == "reserved"
    if version >= 170000:
        assert info["failover"] is False and info["synced"] is False
        assert info["invalidation_reason"] is None
    else:
        assert not new_columns & set(info)
    assert main(["slots", "--dsn", tail_dsn]) == EXIT_OK
    header = capsys.readouterr().out.splitlines()[0]
    assert "wal status" in header
    assert ("failover" in header) == (version >= 170000)


async def test_a_persistent_tail_cut_short_by_its_limit_shows_that_transaction_again(
    tail_dsn: str,
) -> None:
    two_rows = "INSERT INTO items VALUES (10, 'a', 1); INSERT INTO items VALUES (11, 'b', 2)"
    try:
        first = await _run_tail(
            tail_dsn, [two_rows], limit=1, persistent=True, slot="cli_cut", as_json=True
        )
        assert [json.loads(line)["data"]["id"] for line in first.splitlines()] == [10]
        with trio.fail_after(30):  # without the fix, the second row never comes
            again = await _run_tail(
                tail_dsn, [], limit=2, persistent=True, slot="cli_cut", as_json=True
            )
        assert [json.loads(line)["data"]["id"] for line in again.splitlines()] == [10, 11]
    finally:
        with psycopg.connect(tail_dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = 'cli_cut'"
            )
