"""The JSON log formatter: every record of the runtime becomes one parseable JSON line."""

from __future__ import annotations

import json
import logging

import pytest
import trio

from otpy import ChildSpec, Supervisor, TaskServer
from otpy import start as start_actor
from otpy.cli import _parser
from otpy.cli.logs import CliLogging
from otpy.logs import JsonFormatter


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []
        self.crashed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        if getattr(record, "event", None) == "child_crashed":
            self.crashed.set()


async def _crash() -> None:
    raise ValueError("boom")


async def test_supervisor_reports_format_as_json_with_their_structured_fields() -> None:
    handler = _Collect()
    logger = logging.getLogger("otpy")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        async with trio.open_nursery() as nursery:
            # A tuple id and a Ref in the fields: neither may break the formatter.
            spec = ChildSpec(
                id=("worker", object()), start=lambda: TaskServer(_crash), restart="temporary"
            )
            await start_actor(nursery, Supervisor([spec], intensity=5, period=1))
            with trio.fail_after(5):
                await handler.crashed.wait()
            nursery.cancel_scope.cancel()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    records = [json.loads(line) for line in handler.lines]
    crash = next(r for r in records if r.get("event") == "child_crashed")
    assert crash["level"] == "ERROR"
    assert crash["logger"] == "otpy.supervisor"
    assert crash["child_id"][0] == "worker"
    assert crash["child_id"][1].startswith("<object object")
    assert "ValueError: boom" in crash["exception"]
    assert crash["time"].endswith("+00:00")
    assert all(isinstance(r["message"], str) for r in records)


def test_unserialisable_extra_fields_are_written_as_their_repr() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<Thing>"

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hi %s", ("there",), None)
    record.thing = Thing()
    record.nested = {"a": (1, Thing()), 2: None}
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "hi there"
    assert out["thing"] == "<Thing>"
    assert out["nested"] == {"a": [1, "<Thing>"], "2": None}


def test_the_cli_log_format_flag_writes_log_records_as_json_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--log-format json`` (before or after the subcommand) makes every log line JSON."""
    for argv in (["--log-format", "json", "slots"], ["slots", "--log-format", "json"]):
        assert _parser().parse_args([*argv, "--dsn", "host=x"]).log_format == "json"
    with CliLogging("INFO", debug=False, secrets=["hunter2"], json=True):
        logging.getLogger("otpy.test").warning(
            "pool %s lost hunter2", "p", extra={"event": "pool_lost", "pool": "p"}
        )
    line = capsys.readouterr().err.strip()
    record = json.loads(line)
    assert record["event"] == "pool_lost" and record["level"] == "WARNING"
    assert record["message"] == "pool p lost ***" and "hunter2" not in line
