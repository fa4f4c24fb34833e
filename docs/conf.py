"""Sphinx configuration: the guides (Markdown, read by MyST) and the API reference (autodoc).

Why Sphinx: otpy's docstrings are reStructuredText with Google sections
(``Args:``, ``Raises:``) and Sphinx roles (``:func:``, ``:class:``), as in trio,
psycopg and attrs, whose documentation is built the same way.  autodoc renders
the signatures with their types, napoleon reads the Google sections, and
intersphinx links the Python, psycopg and attrs names to their own docs.

Build (``scripts/test.sh`` does it, warnings as errors)::

    sphinx-build -W --keep-going -n -b html docs build/docs

``-n`` (nitpicky) turns every reference that does not resolve into a warning,
and ``tests/docs/test_docs.py`` checks the HTML for roles left raw.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.ext.intersphinx import missing_reference as intersphinx_missing_reference


def _document_the_decoder_source() -> None:
    """Import ``pgoutput`` from its ``.py`` source, even beside a compiled build.

    mypyc compiles the same source; compiled functions carry no source for
    autodoc to read the ``#:`` comments of module constants from, so the
    reference would depend on how the package was installed.
    """
    import importlib.abc
    import importlib.util
    import sys

    name = "otpy.pg.replication.pgoutput"
    source = Path(__file__).resolve().parents[1] / "otpy/pg/replication/pgoutput.py"

    class SourceFirst(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname: str, path: object, target: object = None) -> Any:
            return importlib.util.spec_from_file_location(name, source) if fullname == name else None

    sys.meta_path.insert(0, SourceFirst())


_document_the_decoder_source()

import otpy  # noqa: E402

HERE = Path(__file__).resolve().parent
INVENTORIES = HERE / "_inventories"
sys.path.insert(0, str(HERE / "_ext"))

project = "otpy"
copyright = "otpy developers"  # noqa: A001 (Sphinx's name)
release = version = otpy.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "raw_roles",  # docs/_ext/raw_roles.py: fails the build on markup left raw
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_inventories", "conf.py"]
html_theme = "furo"
html_title = "otpy"
html_static_path: list[str] = []

# --------------------------------------------------------------------------- Markdown (MyST)

# Links such as ``pools.md#checkout`` go to a heading's anchor: make anchors for
# every heading level the pages link to.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

# --------------------------------------------------------------------------- API reference

autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
    # A module documents what it defines.  With ``__all__`` honoured, a class
    # re-exported by a second module (``otpy.pg.wal_reader.Change``, defined in
    # ``otpy.pg.replication.changes``) would be documented twice; references to
    # the re-exported spelling are resolved by ``resolve_reexport`` below.
    "ignore-module-all": True,
}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

nitpicky = True
nitpick_ignore_regex = [
    # trio publishes no inventory this build can read offline; its names are
    # shown as code, unlinked (docs/_inventories/README.md).
    (r"py:.*", r"trio(\..*)?"),
    (r"py:.*", r"outcome(\..*)?"),
    # psycopg's typing names: the psycopg inventory (3.1) does not document them.
    (r"py:.*", r"(psycopg\.rows\.)?(Row|TupleRow)"),
    (r"py:.*", r"psycopg\.errors\.CancellationTimeout"),
    # The pool's internal state, in the signatures of constructors that only the
    # pool calls (Lease, PooledConnection): not part of the API, not documented.
    (r"py:.*", r"otpy\.pg\.pool\.core\.\w+"),
    # Names in postponed annotations of libraries without an inventory here
    # (prometheus_client, pytest), and the bare ``datetime`` class: shown as code.
    (r"py:class", r"(prometheus_client\.(registry\.)?)?CollectorRegistry"),
    (r"py:class", r"_pytest\..*"),
    (r"py:class", r"datetime"),
    # The one member of a sentinel's enum, documented as the module constant.
    (r"py:.*", r"otpy\..*\.(UnchangedToast|JsonNull)\.\w+"),
]

# Inventories are read from the files in docs/_inventories, so the build needs no
# network; the URLs are where the links point.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", str(INVENTORIES / "python.inv")),
    "psycopg": ("https://www.psycopg.org/psycopg3/docs", str(INVENTORIES / "psycopg.inv")),
    "attrs": ("https://www.attrs.org/en/stable", str(INVENTORIES / "attrs.inv")),
}


def _canonical(target: str) -> str | None:
    """Where the object named ``target`` is defined (``module.qualname``), if it can be found."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        obj = inspect.unwrap(obj) if callable(obj) else obj
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if module and qualname:
            canonical = f"{module}.{qualname}"
            return canonical if canonical != target else None
        return None
    return None


#: Names that signatures spell short (annotations imported for type checking
#: only), with the full name their documentation has.
SHORT_NAMES = {
    "AdaptContext": "psycopg.abc.AdaptContext",
    "AsyncRowFactory": "psycopg.rows.AsyncRowFactory",
    "psycopg.pq.abc.PGconn": "psycopg.pq.PGconn",
    "psycopg.pq.abc.PGresult": "psycopg.pq.PGresult",
}


def resolve_reexport(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: nodes.TextElement
) -> nodes.Node | None:
    """Resolve ``otpy.GenServer`` to ``otpy.gen_server.GenServer``, where it is documented.

    otpy's public names are re-exported by the package faces (``otpy``,
    ``otpy.pg.pool``), and the docstrings use those spellings; each object is
    documented once, under the module that defines it.  A short name that is
    not in the current module (``:data:`UNCHANGED_TOAST``` in ``values.py``)
    resolves to the one otpy object of that name, as ``:data:`.UNCHANGED_TOAST```
    would; two candidates are a warning, so the build fails rather than guess.
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    if target in SHORT_NAMES:
        new = node.deepcopy()
        new["reftarget"] = SHORT_NAMES[target]
        return intersphinx_missing_reference(app, env, new, contnode)
    modname = node.get("py:module")
    candidates = [target] if "." in target else []
    if modname and not target.startswith(modname + "."):
        candidates.append(f"{modname}.{target}")
    domain = env.get_domain("py")
    for candidate in candidates:
        if not candidate.startswith("otpy"):
            continue
        canonical = _canonical(candidate)
        if canonical is None:
            continue
        new = node.deepcopy()
        new["reftarget"] = canonical
        found = domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], canonical, new, contnode
        )
        if found is None and node["reftype"] != "obj":
            found = domain.resolve_xref(
                env, node["refdoc"], app.builder, "obj", canonical, new, contnode
            )
        if found is not None:
            return found
    if node.get("refspecific") or target.startswith(("trio", "psycopg", "attr")):
        return None
    # A re-exported constant has no __module__ to follow: look for its name.
    short = target.rpartition(".")[2] if target.startswith("otpy.") else target
    new = node.deepcopy()
    new["refspecific"] = True
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], short, new, contnode)


def _napoleon_property_without_type() -> None:
    """Napoleon reads ``"The size as configured: ..."`` as a type; only a name is a type.

    A Google-style attribute docstring may start with ``type: description``;
    otpy's property docstrings start with a sentence that may hold a colon.  A
    "type" with a space in it (outside brackets) is the sentence, kept whole;
    so is one that starts with a literal (``` ``n``: SQL NULL ```).
    """
    from sphinx.ext.napoleon.docstring import GoogleDocstring

    original = GoogleDocstring._consume_inline_attribute

    def consume(self: GoogleDocstring) -> tuple[str, list[str]]:
        line = self._lines.get(0)
        head = line.partition(":")[0].split("[")[0].strip() if isinstance(line, str) else ""
        if " " in head or head.startswith("`"):  # a sentence, or a literal: ``n``: SQL NULL
            lines = self._dedent(self._consume_to_end())
            return "", self.__class__(lines, self._config).lines()
        return original(self)

    GoogleDocstring._consume_inline_attribute = consume  # type: ignore[method-assign]


SEE_ONLY = re.compile(r"^See :(?:py:)?(func|meth):`~?([\w.]+)`\.?$")


def _expand_see_only(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """A docstring that is only "See :func:`query`." gets the documentation it points to.

    ``Pool.query`` is ``pool.query`` with the pool filled in; its docstring says
    so in one line, which reads well in the source and leaves nothing to read
    in the reference.  The reference shows the function's documentation, then
    the link.  Runs before napoleon, so that the copied sections are read.
    """
    if len([line for line in lines if line.strip()]) != 1:
        return
    match = SEE_ONLY.match(lines[0].strip())
    if match is None:
        return
    role, target = match.groups()
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    found: Any = module
    for attr in target.split("."):
        found = getattr(found, attr, None)
    doc = inspect.getdoc(found) if found is not None else None
    if not doc:
        return
    what_it_is = "with this pool filled in" if role == "func" else "as documented there"
    lines[:] = [*doc.splitlines(), "", f"The same as :{role}:`~{module.__name__}.{target}`, {what_it_is}."]  # type: ignore[union-attr]


def _split_raises(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """``Raises: A / B: ...`` names two exceptions: link each (runs after napoleon)."""
    for i, line in enumerate(lines):
        if line.startswith(":raises ") and " / " in line.partition(":")[2].partition(":")[0]:
            field, _, rest = line[1:].partition(":")
            lines[i] = ":" + field.replace(" / ", " | ") + ":" + rest
    return None


def setup(app: Sphinx) -> None:
    _napoleon_property_without_type()
    app.connect("autodoc-process-docstring", _expand_see_only, priority=400)
    app.connect("autodoc-process-docstring", _split_raises, priority=600)
    app.connect("missing-reference", resolve_reexport)
