#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up, lint, format check, types, docs, tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k pool -x).
source "$(dirname "$0")/_bootstrap.sh"

say "ruff check";             "$VENV/bin/ruff" check .
say "ruff format --check";    "$VENV/bin/ruff" format --check .
say "mypy --strict";          "$VENV/bin/mypy" otpy examples
say "sphinx-build -W -n";     "$VENV/bin/sphinx-build" -W --keep-going -n -q -b html docs "$(mktemp -d)"
say "pytest";                 "$VENV/bin/pytest" "$@"
