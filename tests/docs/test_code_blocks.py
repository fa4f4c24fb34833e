"""Every Python block in the docs runs in the test suite, or is marked a fragment and checked.

A block fenced as ```` ```python ```` runs: in a subprocess of its own, in
an empty directory, bounded in time, it must exit 0 (top-level ``await`` and
``async with`` run in a trio task, as the docs show them).

A block that cannot stand alone (it needs a server, a configuration file, a
running pool, or names from the text around it) is fenced
```` ```python fragment ````: highlighted as Python on GitHub and in the built
docs, and checked rather than run.  Every block, fragment or not, is checked:
it compiles, its imports run, and every name it reads from an otpy module
exists (``otpy.Supervisor.child_spec``, ``pool.query``,
``wal_reader.subscribe``), so a renamed or removed API fails here rather than
in a reader's hands.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from otpy.pg.testing import external_dsn

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "examples" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(
    r"^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<code>.*?)^(?P=indent)```", re.S | re.M
)
FRAGMENT = "fragment"


def python_blocks() -> list[tuple[str, str, bool]]:
    """``(where, code, is_fragment)`` for every fenced Python block of the pages."""
    blocks = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            info = match["info"].split()
            if not info or info[0] not in ("python", "py"):
                continue
            line = text.count("\n", 0, match.start()) + 1
            code = "\n".join(row[len(match["indent"]) :] for row in match["code"].splitlines())
            blocks.append((f"{page.relative_to(REPO)}:{line}", code, FRAGMENT in info[1:]))
    return blocks


BLOCKS = python_blocks()
CHECKED = [pytest.param(code, id=where) for where, code, _ in BLOCKS]
RUN = [pytest.param(code, id=where) for where, code, fragment in BLOCKS if not fragment]

#: Runs the block in the file named by argv[1]; top-level awaits run under trio.
RUNNER = """
import ast, inspect, sys, trio
path = sys.argv[1]
with open(path) as source:
    code = compile(source.read(), path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if inspect.iscoroutine(result):
    async def main():
        await result
    trio.run(main)
"""


def imported_names(tree: ast.Module) -> dict[str, Any]:
    """Run the block's imports; return what each binds (``import a.b`` binds ``a``)."""
    names: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").partition(".")[0] in READERS:
            continue  # the reader's own package: nothing of otpy's to check there
        if isinstance(node, ast.Import):
            for alias in node.names:
                module = importlib.import_module(alias.name)
                if alias.asname:
                    names[alias.asname] = module
                else:
                    top = alias.name.partition(".")[0]
                    names[top] = importlib.import_module(top)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import in the docs"
            assert node.module is not None
            module = importlib.import_module(node.module)
            for alias in node.names:
                try:
                    value = getattr(module, alias.name)
                except AttributeError:
                    value = importlib.import_module(f"{node.module}.{alias.name}")
                names[alias.asname or alias.name] = value
    return names


#: Stand-ins for the reader's own package in the docs (``from myapp.handlers import ...``).
READERS = frozenset({"myapp"})


def attribute_chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
    """``otpy.Supervisor.child_spec`` -> ``("otpy", ["Supervisor", "child_spec"])``."""
    attrs: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        attrs.append(current.attr)
        current = current.value
    if isinstance(current, ast.Name):
        return current.id, attrs[::-1]
    return None


def unresolved(tree: ast.Module, names: dict[str, Any]) -> list[str]:
    """Names read from otpy modules (and their classes) that do not exist."""
    rebound = {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    missing = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain = attribute_chain(node)
        if chain is None or chain[0] not in names or chain[0] in rebound:
            continue
        obj = names[chain[0]]
        spelled = chain[0]
        for attr in chain[1]:
            if not isinstance(obj, ModuleType | type):
                break  # an instance: its attributes are the block's business
            if not (getattr(obj, "__name__", "") or "").startswith("otpy") and not (
                getattr(obj, "__module__", "") or ""
            ).startswith("otpy"):
                break  # only otpy's names are checked
            spelled = f"{spelled}.{attr}"
            if not hasattr(obj, attr):
                missing.append(spelled)
                break
            obj = getattr(obj, attr)
    return sorted(set(missing))


def test_the_pages_have_python_blocks_to_check_and_run() -> None:
    assert len(CHECKED) >= 10 and len(RUN) >= 5  # the extraction found the blocks


@pytest.mark.parametrize("code", CHECKED)
def test_python_block_matches_the_code(code: str) -> None:
    # Compiled whole, not only parsed: a stray ``return`` or ``yield`` fails too.
    compile(code, "<block>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    tree = ast.parse(code)
    names = imported_names(tree)
    assert unresolved(tree, names) == []


@pytest.mark.parametrize("code", RUN)
def test_python_block_runs(code: str, tmp_path: Path) -> None:
    if "PostgresServer" in code and external_dsn() is not None:
        pytest.skip("uses the PostgreSQL binaries")
    block = tmp_path / "block.py"
    block.write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(block)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=60,
    )
    hint = "(a block that cannot stand alone is fenced ```python fragment)"
    assert result.returncode == 0, f"{result.stdout.decode()}\n{hint}"


def test_a_renamed_api_is_caught() -> None:
    tree = ast.parse(
        "import otpy\nfrom otpy.pg import pool\notpy.Supervisor.child_specs\npool.qurey"
    )
    assert unresolved(tree, imported_names(tree)) == ["otpy.Supervisor.child_specs", "pool.qurey"]
