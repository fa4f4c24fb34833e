"""The reader's modules moved into otpy.pg.wal_reader: old import paths keep working, loudly."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

#: Old module path -> its new home.
MOVED = {
    "otpy.pg.snapshot": "otpy.pg.wal_reader.snapshot",
    "otpy.pg.dead_letters": "otpy.pg.wal_reader.dead_letters",
    "otpy.pg.reader_metrics": "otpy.pg.wal_reader.metrics",
    "otpy.pg.replication.stream": "otpy.pg.wal_reader.stream",
    "otpy.pg.replication.slots": "otpy.pg.wal_reader.slots",
    "otpy.pg.replication.typefetch": "otpy.pg.wal_reader.typefetch",
    "otpy.pg.replication.watch": "otpy.pg.wal_reader.watch",
}


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_module_path_warns_and_is_the_module_at_its_new_home(old: str, new: str) -> None:
    sys.modules.pop(old, None)
    with pytest.deprecated_call(match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


@pytest.mark.parametrize("name", ["fetch_missing_types", "afetch_missing_types"])
def test_type_fetching_names_of_the_pure_package_warn_and_resolve_beside_the_reader(
    name: str,
) -> None:
    import otpy.pg.replication
    from otpy.pg.wal_reader import typefetch

    with pytest.deprecated_call(match=f"otpy.pg.replication.{name} moved"):
        moved = getattr(otpy.pg.replication, name)
    assert moved is getattr(typefetch, name)


def test_the_reader_api_and_otpy_itself_import_without_a_deprecation_warning() -> None:
    code = (
        "import otpy.pg.app, otpy.pg.metrics, otpy.pg.exactly_once, otpy.cli\n"
        "import otpy.pg.replication\n"
        "from otpy.pg.wal_reader import (subscribe, unsubscribe, subscriptions, Subscription,\n"
        "    ReaderState, ReaderPhase, WalReader, backfill, Change, ChangeBatch)\n"
        "from otpy.pg.wal_reader import dead_letters, metrics, slots, snapshot, stream\n"
        "from otpy.pg.wal_reader import typefetch, watch\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
