"""Fail the docs build when reStructuredText shows through in the HTML.

A docstring role that no parser read (``:func:`call```) or a literal-block
marker left in the text (``Example::``) means a page was rendered by the wrong
parser: the reader sees markup instead of a link or a code block.  After an
HTML build this scans every page's text, outside ``<pre>`` and ``<code>``, and
reports each hit as a warning, which ``-W`` turns into a failed build.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the scanner itself needs only the standard library (tests/docs)
    from sphinx.application import Sphinx

ROLES = ("func", "class", "meth", "attr", "data", "mod", "exc", "obj")
#: A role (``:func:`` or ``:py:func:``) or a ``::`` in prose.
RAW = re.compile(r":(?:py:)?(?:%s):|::(?=\s|$)" % "|".join(ROLES))


class _Prose(HTMLParser):
    """Collects the text of a page outside code, scripts and styles."""

    SKIP = frozenset({"pre", "code", "script", "style", "kbd", "samp"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if not self.depth:
            self.parts.append(data)


def raw_markup(html: str) -> list[str]:
    """The raw roles and ``::`` markers in ``html``'s prose, each with some context."""
    parser = _Prose()
    parser.feed(html)
    text = " ".join(" ".join(parser.parts).split())
    return [text[max(0, m.start() - 40) : m.end() + 40] for m in RAW.finditer(text)]


def check_build(app: Sphinx, exception: Exception | None) -> None:
    """After an HTML build: warn about every page that shows raw markup."""
    from sphinx.util import logging

    if exception is not None or app.builder.format != "html":
        return
    logger = logging.getLogger(__name__)
    for page in sorted(Path(app.outdir).rglob("*.html")):
        if page.parent.name.startswith("_"):  # _modules, _static: not pages
            continue
        for hit in raw_markup(page.read_text(encoding="utf-8")):
            logger.warning(
                "raw reStructuredText in %s: ...%s...",
                page.relative_to(app.outdir),
                hit,
                type="otpy",
                subtype="raw_role",
            )


def setup(app: Sphinx) -> dict[str, bool]:
    app.connect("build-finished", check_build)
    return {"parallel_read_safe": True}
