"""The docs build fails on reStructuredText left raw in the HTML (docs/_ext/raw_roles.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "docs" / "_ext" / "raw_roles.py"
_SPEC = importlib.util.spec_from_file_location("raw_roles", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
raw_roles = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(raw_roles)
raw_markup = raw_roles.raw_markup


@pytest.mark.parametrize(
    "html",
    [
        "<p>Stop it with :func:<code>stop</code>.</p>",  # what mkdocstrings rendered
        "<p>Raises :py:exc:`Timeout` after a while.</p>",
        "<p>See :class:`Pool`.</p>",
        "<p>The Erlang original::</p><pre>get_user(Id) -&gt; ok.</pre>",
    ],
)
def test_a_role_or_literal_marker_in_prose_is_reported(html: str) -> None:
    assert raw_markup(html)


@pytest.mark.parametrize(
    "html",
    [
        "<p>A link to <a href='#otpy.call'><code>call</code></a>.</p>",
        "<pre>SELECT %s::oid[]; x = a[::2]</pre>",
        "<p>Cast with <code>::regclass</code> or <code>:func:</code> in code.</p>",
        "<p>IPv6 loopback ::1 and a cast like %s::oid in a constant.</p>",
    ],
)
def test_code_links_and_casts_are_not_reported(html: str) -> None:
    assert raw_markup(html) == []
