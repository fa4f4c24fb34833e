"""Layers import only downwards: the package's floor plan, checked from the source.

Every module under ``otpy/`` is parsed with :mod:`ast` (nothing is imported or
run), and its imports of otpy modules are collected: top-level ones, the ones
inside functions (they run too, only later), but not those under
``if TYPE_CHECKING:``, which exist for the type checker alone.  Then:

(a) no import cycle among otpy modules: a cycle makes import order matter, so a
    harmless-looking new import can break ``import otpy`` for everyone, and it
    hides which module is the lower one;
(b) the runtime (``otpy/*.py``) imports nothing from ``otpy.pg`` or ``otpy.cli``:
    the actor runtime knows nothing about PostgreSQL and must stay usable and
    testable without it;
(c) ``otpy.pg.replication`` does no I/O: it promises pure decoding (bytes in,
    values out), so it can be fuzzed, benchmarked and reused without a server;
(d) no module imports a private name (``_x``) from another otpy module: a
    private name is free to change, so a second module leaning on it is an API
    nobody documented.  ``otpy._util``, ``otpy._deadlines`` and ``otpy._moved``
    are private *modules* with public names: importing those names is the point;
(e) each module imports only from its own layer or below (:data:`LAYERS`).

Old import paths kept by :func:`otpy._moved.alias_module` (shim modules) hold
no code and are left out.  ``KNOWN_VIOLATIONS`` lists what today's tree still
breaks, each with who fixes it; the checks skip exactly those, and fail on any
other one and on a listed one that is gone (so the list is emptied as fixes land).
"""

from __future__ import annotations

import ast
import collections
import itertools
from collections.abc import Iterator
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "otpy"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # 1. One home per mechanism: deadlines, exception groups, moved names, exit
    #    reasons and the runtime's errors (which carry exit reasons).
    (
        "shared mechanisms",
        ("otpy._util", "otpy._deadlines", "otpy._moved", "otpy.exit_reason", "otpy.errors"),
    ),
    # 2. The OTP runtime on trio; it knows nothing of PostgreSQL. Face: otpy/__init__.py.
    (
        "runtime",
        (
            "otpy",
            "otpy.actor",
            "otpy.process",
            "otpy.gen_server",
            "otpy.registry",
            "otpy.child_spec",
            "otpy.supervisor",
            "otpy.dynamic_supervisor",
            "otpy.application",
            "otpy.logs",
        ),
    ),
    # 3. psycopg on trio: errors, config, version check, waits, the connection, COPY_BOTH.
    (
        "pg base",
        (
            "otpy.pg",
            "otpy.pg.errors",
            "otpy.pg.config",
            "otpy.pg.compat",
            "otpy.pg.waiting",
            "otpy.pg.connection",
            "otpy.pg.copy_both",
        ),
    ),
    # 4. pgoutput and value decoding: bytes in, values out, no I/O (check c).
    ("pure replication decoding", ("otpy.pg.replication.*",)),
    # 5. Pool manager, workers and the checkout API.
    ("pools", ("otpy.pg.pool.*",)),
    # 6. The WAL reader and its I/O: stream, slots, type fetching, snapshots, dead letters.
    ("WAL readers", ("otpy.pg.wal_reader.*",)),
    # 7. What is built from pools and readers: exactly-once, health, metrics, the app, testing.
    (
        "pg services",
        (
            "otpy.pg.exactly_once",
            "otpy.pg.health",
            "otpy.pg.metrics",
            "otpy.pg.app",
            "otpy.pg.testing",
        ),
    ),
    # 8. What users run: the pytest plugin and the command line.
    ("entry points", ("otpy.pytest_plugin", "otpy.cli.*")),
)
"""The layers, lowest first (issue #18's map): a module imports only from its layer or below.

Why: a lower layer can then be read, tested and changed without the ones above
it (the runtime without PostgreSQL, the decoder without a connection, a pool
without a reader), and a change to an upper layer cannot break a lower one.
Imports *within* a layer are free, but check (a) keeps them acyclic.

``"pkg.*"`` stands for the package ``pkg`` and every module under it.  A new
module must be placed here: an unplaced module fails the test, so that its
author decides its layer instead of inheriting one by accident.
"""

#: Private modules whose names are public to the rest of otpy (check d).
SHARED_PRIVATE_MODULES = frozenset({"otpy._util", "otpy._deadlines", "otpy._moved"})

#: What counts as I/O for ``otpy.pg.replication`` (check c): otpy modules that
#: talk to a server, psycopg's connection and cursor classes, trio's sockets,
#: ``trio.open_*`` and trio's fd waits.
IO_MODULES = (
    "otpy.pg.connection",
    "otpy.pg.copy_both",
    "otpy.pg.waiting",
    "otpy.pg.pool",
    "otpy.pg.wal_reader",
    "psycopg.connection",
    "psycopg.connection_async",
    "psycopg.cursor",
    "psycopg.cursor_async",
    "psycopg.waiting",
    "psycopg.generators",
    "trio.socket",
)
IO_NAMES = {
    "psycopg": frozenset(
        {
            "Connection",
            "AsyncConnection",
            "connect",
            "Cursor",
            "AsyncCursor",
            "ClientCursor",
            "AsyncClientCursor",
            "ServerCursor",
            "AsyncServerCursor",
            "RawCursor",
            "AsyncRawCursor",
            "Pipeline",
            "AsyncPipeline",
            "Copy",
            "AsyncCopy",
        }
    ),
    "trio": frozenset({"socket", "SocketStream", "SocketListener", "run_process"}),
    "trio.lowlevel": frozenset({"wait_readable", "wait_writable", "notify_closing"}),
}

#: Violations accepted for now, each with its reason (empty since #18 landed).
#: Each entry starts with the check's tag.
KNOWN_VIOLATIONS: set[str] = {
    # The deprecated DatabaseConfig.connect() imports the connection inside the
    # method; it goes away in otpy 0.2 (otpy._moved.REMOVED_IN), and the circle with it.
    "cycle: otpy.pg.config <-> otpy.pg.connection",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@attrs.frozen
class Import:
    """One imported otpy module, or one name taken from it, at a line of a module."""

    importer: str
    module: str  # the otpy module the import resolves to
    name: str | None  # the name taken from it (``from m import name``), if any
    line: int

    def where(self) -> str:
        return f"{self.importer}:{self.line}"


@attrs.frozen
class Reference:
    """A dotted name used in a module (``trio.socket``, ``psycopg.AsyncConnection``)."""

    module: str
    dotted: str
    line: int


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except what is under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from runtime_nodes(other)
            continue
        yield child
        yield from runtime_nodes(child)


def dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


@attrs.frozen
class Source:
    """The parsed package: its modules and, per module, what it imports and uses."""

    modules: frozenset[str]
    shims: frozenset[str]
    imports: tuple[Import, ...]  # imports of otpy modules and names
    foreign: tuple[Import, ...]  # imports of anything else (psycopg, trio...)
    references: tuple[Reference, ...]


def resolve(modules: frozenset[str], name: str) -> str:
    """The otpy module a dotted import names: itself, or the package it is in."""
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def parse(root: Path = ROOT) -> Source:
    paths = {
        module_name(p): p for p in sorted((root / "otpy").rglob("*.py")) if p.name != "__main__.py"
    }
    modules = frozenset(paths)
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in paths.items()}
    shims = frozenset(
        name
        for name, tree in trees.items()
        if name != "otpy._moved"
        and any(
            isinstance(node, ast.Call) and (dotted(node.func) or "").endswith("alias_module")
            for node in ast.walk(tree)
        )
    )
    imports: list[Import] = []
    foreign: list[Import] = []
    references: list[Reference] = []
    for name, tree in trees.items():
        package = name if paths[name].name == "__init__.py" else name.rpartition(".")[0]
        for node in runtime_nodes(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found = Import(name, alias.name, None, node.lineno)
                    if alias.name.split(".")[0] == "otpy":
                        found = attrs.evolve(found, module=resolve(modules, alias.name))
                        imports.append(found)
                    else:
                        foreign.append(found)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                for alias in node.names:
                    if source.split(".")[0] != "otpy":
                        foreign.append(Import(name, source, alias.name, node.lineno))
                    elif f"{source}.{alias.name}" in modules:  # a submodule
                        imports.append(Import(name, f"{source}.{alias.name}", None, node.lineno))
                    else:
                        imports.append(
                            Import(name, resolve(modules, source), alias.name, node.lineno)
                        )
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                path = dotted(node)
                if path is not None:
                    references.append(Reference(name, path, node.lineno))
    return Source(modules, shims, tuple(imports), tuple(foreign), tuple(references))


SOURCE = parse()


def layer_of(module: str) -> int | None:
    for index, (_title, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (
                member.endswith(".*") and (module == member[:-2] or module.startswith(member[:-1]))
            ):
                return index
    return None


#: The layer whose modules must do no I/O (check c).
REPLICATION_LAYER = layer_of("otpy.pg.replication")


def edges(source: Source = SOURCE) -> dict[str, dict[str, Import]]:
    """importer -> imported otpy module -> its first import (shims, self-imports left out)."""
    graph: dict[str, dict[str, Import]] = collections.defaultdict(dict)
    for found in source.imports:
        if found.importer in source.shims or found.module == found.importer:
            continue
        graph[found.importer].setdefault(found.module, found)
    return graph


def cycles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def cycle_path(graph: dict[str, dict[str, Import]], component: list[str]) -> str:
    """One concrete cycle through ``component``, with the import lines, for the failure message."""
    members = set(component)
    start = component[0]
    # Breadth-first from start back to start, inside the component.
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph.get(node, {})):
            if target not in members:
                continue
            if target == start:
                steps = [*paths[node], start]
                return (
                    " -> ".join(
                        f"{a} ({graph[a][b].where()})" for a, b in itertools.pairwise(steps)
                    )
                    + f" -> {start}"
                )
            if target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    return " -> ".join(component)


def assert_only_known(tag: str, found: dict[str, str]) -> None:
    """``found`` maps each violation (its KNOWN_VIOLATIONS spelling) to a longer explanation."""
    known = {v for v in KNOWN_VIOLATIONS if v.startswith(tag + ":")}
    new = sorted(set(found) - known)
    fixed = sorted(known - set(found))
    assert not new, "new violation(s):\n  " + "\n  ".join(f"{v}\n    {found[v]}" for v in new)
    assert not fixed, "fixed, remove from KNOWN_VIOLATIONS:\n  " + "\n  ".join(fixed)


def test_the_parse_sees_the_package_and_its_imports() -> None:
    # A guard for the parse itself: nothing found would make every check pass.
    assert {"otpy", "otpy.actor", "otpy.pg.pool", "otpy.pg.testing"} <= SOURCE.modules
    assert "otpy.testing" in SOURCE.shims or not (PACKAGE / "testing.py").exists()
    assert any(i.importer == "otpy.supervisor" and i.module == "otpy.actor" for i in SOURCE.imports)


def test_no_import_cycle_among_otpy_modules() -> None:
    graph = edges()
    found = {
        f"cycle: {' <-> '.join(component)}": cycle_path(graph, component)
        for component in cycles(graph)
    }
    assert_only_known("cycle", found)


def test_the_runtime_imports_nothing_from_the_connector_or_the_cli() -> None:
    found = {}
    for module, targets in edges().items():
        if module.count(".") > 1 or module in {"otpy.pytest_plugin", "otpy.cli"}:
            continue  # not a top-level runtime module
        if module.startswith(("otpy.pg", "otpy.cli")):
            continue
        for target, first in targets.items():
            if target.startswith(("otpy.pg", "otpy.cli")):
                found[f"runtime imports pg: {module} imports {target}"] = first.where()
    assert_only_known("runtime imports pg", found)


def io_module(module: str) -> str | None:
    """The I/O module that ``module`` is or is inside, if any."""
    for io in IO_MODULES:
        if module == io or module.startswith(io + "."):
            return io
    return None


def io_name(owner: str, name: str) -> bool:
    return name in IO_NAMES.get(owner, ()) or (owner == "trio" and name.startswith("open_"))


def test_replication_decoding_does_no_io() -> None:
    found = {}
    replication = {m for m in SOURCE.modules - SOURCE.shims if layer_of(m) == REPLICATION_LAYER}
    for used in (*SOURCE.imports, *SOURCE.foreign):
        if used.importer not in replication:
            continue
        io = io_module(used.module) or (used.name and io_module(f"{used.module}.{used.name}"))
        if io:
            found[f"io: {used.importer} imports {io}"] = used.where()
        elif used.name is not None and io_name(used.module, used.name):
            found[f"io: {used.importer} imports {used.module}.{used.name}"] = used.where()
    for ref in SOURCE.references:
        owner, _, attr = ref.dotted.rpartition(".")
        if ref.module in replication and io_name(owner, attr):
            found[f"io: {ref.module} uses {ref.dotted}"] = f"{ref.module}:{ref.line}"
    assert_only_known("io", found)


def test_no_module_imports_a_private_name_of_another() -> None:
    found = {}
    for found_import in SOURCE.imports:
        if found_import.importer in SOURCE.shims or found_import.module == found_import.importer:
            continue
        module, name = found_import.module, found_import.name
        if name is None:  # ``import otpy.x._y`` or ``from otpy.x import _y`` (a module)
            private = [part for part in module.split(".") if part.startswith("_")]
            if private and module not in SHARED_PRIVATE_MODULES:
                found[f"private: {found_import.importer} imports {module}"] = found_import.where()
        elif name.startswith("_") and not name.startswith("__"):
            found[f"private: {found_import.importer} imports {module}.{name}"] = (
                found_import.where()
            )
    assert_only_known("private", found)


def test_every_module_imports_only_from_its_layer_or_below() -> None:
    found = {}
    for module in sorted(SOURCE.modules - SOURCE.shims):
        if layer_of(module) is None:
            found[f"layer: {module} is in no layer of LAYERS"] = "place it in LAYERS"
    for module, targets in edges().items():
        mine = layer_of(module)
        for target, first in targets.items():
            theirs = layer_of(target)
            if mine is None or theirs is None or target in SOURCE.shims:
                continue
            if theirs > mine:
                found[f"layer: {module} ({LAYERS[mine][0]}) imports {target}"] = (
                    f"{first.where()}: {target} is in {LAYERS[theirs][0]}, a higher layer"
                )
    assert_only_known("layer", found)
