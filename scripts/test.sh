#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up, lint, format check, types, docs, tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k pool -x).
# The server: OTPY_PG_BINDIR if set, else the embedded PostgreSQL 18, else the system's
# (docs/testing.md); OTPY_SKIP_CHECKS=1 runs pytest only (.ci/run, for its second server).
source "$(dirname "$0")/_bootstrap.sh"

if [ "${OTPY_SKIP_CHECKS:-0}" = 0 ]; then
    say "ruff check";             "$VENV/bin/ruff" check .
    say "ruff format --check";    "$VENV/bin/ruff" format --check .
    say "mypy --strict";          "$VENV/bin/mypy" otpy examples
    say "sphinx-build -W -n";     "$VENV/bin/sphinx-build" -W --keep-going -n -q -b html docs "$(mktemp -d)"
fi
say "pytest";                 "$VENV/bin/pytest" "$@"
