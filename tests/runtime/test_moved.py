"""Old import paths keep working and warn: the mechanism every moved module and name uses."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SHIM = "from otpy._moved import alias_module\nalias_module(__name__, 'json')\n"
FACE = (
    "from otpy._moved import moved_names\n"
    "__getattr__ = moved_names(__name__, {'old_dumps': 'json:dumps'})\n"
)


@pytest.fixture
def movedpkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    package = tmp_path / "movedpkg"
    package.mkdir()
    (package / "__init__.py").write_text(FACE)
    (package / "oldmod.py").write_text(SHIM)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "movedpkg"
    for name in [n for n in sys.modules if n.startswith("movedpkg")]:
        del sys.modules[name]


def test_an_aliased_module_warns_at_the_importer_and_is_the_new_module(movedpkg: str) -> None:
    with pytest.warns(DeprecationWarning, match=r"movedpkg\.oldmod moved to json") as record:
        module = importlib.import_module(f"{movedpkg}.oldmod")
    assert module is json
    assert sys.modules[f"{movedpkg}.oldmod"] is json
    assert sys.modules[movedpkg].oldmod is json
    assert "otpy/_moved.py" not in record[0].filename


def test_a_moved_name_warns_and_returns_the_object_from_its_new_home(movedpkg: str) -> None:
    package = importlib.import_module(movedpkg)
    with pytest.warns(DeprecationWarning, match=r"movedpkg\.old_dumps moved to json\.dumps"):
        assert package.old_dumps is json.dumps
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        package.missing  # noqa: B018
