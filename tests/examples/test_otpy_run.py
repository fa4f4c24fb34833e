"""Every example runs as examples/README.md says: ``otpy run EXAMPLE:app --config ...``.

Each runs in a subprocess of the ``otpy`` console script, from ``examples/``,
with the libpq environment (``PGHOST``, ``PGPORT``, ...) pointing at the test
server, as a user's shell would; it must do its work once and exit 0 on its own,
within a bounded time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from psycopg.conninfo import conninfo_to_dict

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: libpq keyword -> the environment variable libpq reads it from.
LIBPQ_ENV = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "dbname": "PGDATABASE",
    "password": "PGPASSWORD",
    "sslmode": "PGSSLMODE",
}

#: What each example prints when it did its work (its README row says what it shows).
RUNS: dict[str, tuple[list[str], list[str]]] = {
    # example: (otpy run arguments after MODULE:app, lines the output must have)
    "supervision_tree": (
        [],
        ["worker crashed", "counter crashed", "root supervisor exited: GaveUp"],
    ),
    "user_service": (
        ["--config", "examples.toml"],
        ["name='Alice', email='alice@example.com'", "get_user(-1) -> None"],
    ),
    "user_replication_handler": (
        ["--config", "examples.toml"],
        ["New user created:", "User deleted:", "Replication stopped for slot: myapp_slot"],
    ),
    "order_sync": (["--config", "examples.toml"], ["event_type=order_created", "status=delivered"]),
    "two_way_sync": ([], ["rows_a=10, rows_b=10", "echoes_skipped="]),
}


def otpy_command() -> list[str]:
    """The ``otpy`` console script of this environment (``python -m otpy.cli`` without one)."""
    script = Path(sys.executable).with_name("otpy")
    if script.exists():
        return [str(script)]
    found = shutil.which("otpy")
    return [found] if found else [sys.executable, "-m", "otpy.cli"]


def libpq_environment(dsn: str) -> dict[str, str]:
    """The ``PG*`` variables that make libpq connect where ``dsn`` says."""
    params = conninfo_to_dict(dsn)
    return {LIBPQ_ENV[k]: str(v) for k, v in params.items() if k in LIBPQ_ENV and v is not None}


def test_every_example_is_run_here() -> None:
    scripts = {p.stem for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(RUNS), "an example without an otpy run test (or a test without one)"


@pytest.mark.parametrize("example", sorted(RUNS))
async def test_example_runs_with_otpy_run_and_stops_by_itself(
    example: str, module_dsn: str
) -> None:
    args, expected = RUNS[example]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(libpq_environment(module_dsn))
    with trio.fail_after(120):
        result = await trio.run_process(
            [*otpy_command(), "run", f"{example}:app", *args],
            cwd=EXAMPLES,
            env=env,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    output = result.stdout.decode()
    assert result.returncode == 0, output  # ExitCode.STOPPED: it finished and stopped in order
    for line in expected:
        assert line in output, output
