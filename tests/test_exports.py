"""One spelling and one home per public name: what ``import otpy...`` offers is checked here.

The model is trio's ``_tests/test_exports.py``.  The public faces are the modules
the reference documentation shows (``automodule`` and friends in
``docs/reference/*.md``) and every package ``__init__``.  For them:

* every name in ``__all__`` exists (and is not a deprecated, moved name);
* no object has two public names (``TooManyWaiters = PoolOverloaded`` makes a
  reader wonder which one to catch, and one of them must then live forever);
* a public name means one object wherever it is public (``otpy.monitor`` and
  ``otpy.actor.monitor`` must not be two functions with different signatures);
* every public class and function has a docstring of its own.

And for every otpy module (not only the faces): importing it with
``-W error::DeprecationWarning`` succeeds, so no otpy module uses an old path
that :mod:`otpy._moved` keeps alive (it would warn every user), and every such
old path (a shim module calling :func:`otpy._moved.alias_module`) does warn.

``KNOWN_VIOLATIONS`` lists what today's tree still breaks, each with who fixes
it; the checks skip exactly those and fail on any other, and also when a listed
one is gone (so the list is emptied as the fixes land).
"""

from __future__ import annotations

import ast
import collections
import importlib
import inspect
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "otpy"

#: Violations accepted for now, each with its reason (empty since #18 landed).
#: Each entry starts with the check's tag.
KNOWN_VIOLATIONS: set[str] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_shim(path: Path) -> bool:
    """A module kept for an old import path: it calls ``otpy._moved.alias_module``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name == "alias_module":
                return True
    return False


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")
SHIMS = sorted(module_name(p) for p in SOURCES if p.name != "_moved.py" and is_shim(p))
MODULES = sorted(module_name(p) for p in SOURCES if module_name(p) not in SHIMS)


def public_faces() -> list[str]:
    """The documented modules and every package ``__init__``."""
    faces = {module_name(p) for p in SOURCES if p.name == "__init__.py"}
    directive = re.compile(
        r"^\.\. auto(module|class|function|exception|data)::\s*(otpy[\w.]*)", re.M
    )
    for page in (ROOT / "docs" / "reference").glob("*.md"):
        for kind, target in directive.findall(page.read_text()):
            faces.add(target if kind == "module" else target.rpartition(".")[0])
    return sorted(faces - set(SHIMS))


FACES = public_faces()


def public_names(module: ModuleType) -> list[str]:
    """``__all__``, plus any un-underscored class or function the module defines itself.

    The second part catches a public-looking name left out of ``__all__``
    (``otpy.actor.monitor``): Python users reach it all the same.
    """
    names = set(getattr(module, "__all__", ()))
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if obj.__module__ == module.__name__:
            names.add(name)
    return sorted(names)


def is_api_object(obj: object) -> bool:
    """Classes and functions of otpy's own (constants may share objects by chance)."""
    return (inspect.isclass(obj) or inspect.isroutine(obj)) and str(
        getattr(obj, "__module__", "")
    ).startswith("otpy")


def api() -> list[tuple[str, str, object]]:
    """(module, name, object) for every public class and function of every face."""
    found = []
    for face in FACES:
        module = importlib.import_module(face)
        for name in public_names(module):
            obj = vars(module).get(name)
            if is_api_object(obj):
                found.append((face, name, obj))
    return found


def assert_only_known(tag: str, found: set[str]) -> None:
    known = {v for v in KNOWN_VIOLATIONS if v.startswith(tag + ":")}
    new = sorted(found - known)
    fixed = sorted(known - found)
    assert not new, "new violation(s):\n  " + "\n  ".join(new)
    assert not fixed, "fixed, remove from KNOWN_VIOLATIONS:\n  " + "\n  ".join(fixed)


def test_the_public_faces_include_the_package_and_its_documented_modules() -> None:
    # A guard for the discovery itself: an empty list would make every check pass.
    assert {"otpy", "otpy.pg.pool", "otpy.pg.wal_reader", "otpy.pg.testing"} <= set(FACES)
    assert "otpy.testing" in SHIMS or not (PACKAGE / "testing.py").exists()


def test_every_name_in_all_exists_and_is_not_a_moved_name() -> None:
    found = set()
    for face in FACES:
        module = importlib.import_module(face)
        for name in getattr(module, "__all__", ()):
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)
                try:
                    getattr(module, name)
                except AttributeError:
                    found.add(f"missing: {face}.__all__ lists {name}, which does not exist")
                except DeprecationWarning:
                    found.add(f"missing: {face}.__all__ lists {name}, which moved away")
    assert_only_known("missing", found)


def test_no_object_has_two_public_names() -> None:
    names = collections.defaultdict(set)
    for _face, name, obj in api():
        names[id(obj), f"{obj.__module__}.{obj.__qualname__}"].add(name)  # type: ignore[attr-defined]
    found = {
        f"alias: {home} is public as {', '.join(sorted(spellings))}"
        for (_, home), spellings in names.items()
        if len(spellings) > 1
    }
    assert_only_known("alias", found)


def test_a_public_name_is_one_object_wherever_it_is_public() -> None:
    homes = collections.defaultdict(dict)
    for face, name, obj in api():
        homes[name].setdefault(id(obj), []).append(face)
    found = set()
    for name, objects in homes.items():
        if len(objects) > 1:
            # Name the modules that *define* a rival object (a face re-exporting
            # one of them is not the culprit).
            defining = sorted(
                {
                    face
                    for faces in objects.values()
                    for face in faces
                    if getattr(importlib.import_module(face), name).__module__ == face
                }
                or {face for faces in objects.values() for face in faces}
            )
            found.add(f"two objects: {name} is a different object in {', '.join(defining)}")
    assert_only_known("two objects", found)


def source_docstring(obj: object) -> str | None:
    """The docstring in the source of a module compiled by mypyc (its objects carry none)."""
    module = sys.modules[obj.__module__]  # type: ignore[attr-defined]
    source = Path(module.__file__ or "").with_name(module.__name__.rpartition(".")[2] + ".py")
    if not source.exists():
        return None
    for node in ast.parse(source.read_text()).body:
        defines = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        if isinstance(node, defines) and node.name == obj.__name__:  # type: ignore[attr-defined]
            return ast.get_docstring(node)
    return None


def test_every_public_class_and_function_has_a_docstring() -> None:
    found = set()
    for face, name, obj in api():
        own = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        if not (isinstance(own, str) and own.strip()):
            own = source_docstring(obj)
        if not (isinstance(own, str) and own.strip()):
            found.add(f"no docstring: {face}.{name}")
    assert_only_known("no docstring", found)


IMPORT_EACH = """
import importlib, json, sys, traceback
failures = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except BaseException as exc:
        # Blame the line that imported the old path, not every module above it:
        # the frame before the first one in otpy/_moved.py or in a shim,
        # importlib's own frames skipped.
        frames = traceback.extract_tb(exc.__traceback__)
        culprit = name
        for i, frame in enumerate(frames):
            if frame.filename.endswith("_moved.py") or "alias_module" in (frame.line or ""):
                before = [f for f in frames[:i] if "importlib" not in f.filename]
                if before:
                    culprit = before[-1].filename
                break
        failures[name] = [culprit, f"{type(exc).__name__}: {exc}"]
print(json.dumps(failures))
"""


def import_each(modules: list[str]) -> dict[str, tuple[str, str]]:
    """Import each module, in one fresh interpreter where DeprecationWarning is an error.

    Returns, for each module that failed, the file that imported an old path
    (or the module itself) and the error.
    """
    out = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", IMPORT_EACH, *modules],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    failures = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        name: (str(Path(culprit).resolve().relative_to(ROOT)) if "/" in culprit else culprit, error)
        for name, (culprit, error) in failures.items()
    }


def test_no_otpy_module_imports_an_old_path() -> None:
    found = {
        f"deprecated import: {culprit}: {error}"
        if error.startswith("DeprecationWarning")
        else f"deprecated import: {name} does not import at all: {error}"
        for name, (culprit, error) in import_each(MODULES).items()
    }
    assert_only_known("deprecated import", found)


@pytest.mark.skipif(not SHIMS, reason="no old import paths are kept")
def test_every_old_import_path_warns() -> None:
    # Each shim is imported first in that interpreter (no otpy module imports
    # one: the test above), so its warning cannot have been spent already.
    failures = import_each(SHIMS)
    assert sorted(failures) == SHIMS
    assert all(error.startswith("DeprecationWarning") for _, error in failures.values()), failures
