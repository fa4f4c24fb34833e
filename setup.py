"""Build script: compiles the pgoutput decoder with mypyc when it can.

All package metadata lives in pyproject.toml; this file only adds the C
extension.  mypyc (part of mypy) compiles ``otpy/pg/replication/pgoutput.py``,
the same source the interpreter runs, so there is no second implementation to
keep in step: the compiled module decodes pgoutput 2-3x faster (see
docs/performance.md).  When it cannot be built (no C compiler, no Python
headers, or ``OTPY_PURE_PYTHON=1`` in the environment) the package installs
as pure Python and behaves the same, only slower.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

COMPILED = ["otpy/pg/replication/pgoutput.py"]


def ext_modules() -> list[Extension]:
    if os.environ.get("OTPY_PURE_PYTHON", "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify

        # The build environment has mypy and attrs but not trio or psycopg, which
        # the package's other modules import: their errors are not this build's.
        modules: list[Extension] = mypycify(["--follow-imports=silent", *COMPILED], opt_level="3")
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error
        print(f"otpy: not compiling {COMPILED} ({exc!r}): pure Python", file=sys.stderr)
        return []
    for module in modules:
        module.optional = True  # a compiler error leaves the pure-Python module
    return modules


setup(ext_modules=ext_modules())
